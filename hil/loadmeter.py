"""The lightweight load meter: a meter's link protocol answered by a CPython asyncio endpoint,
many per process, for the campaign engine's tests and its scale bench (#12).

A simulated meter (hil/sim.py) costs a process and tens of MB; a LoadMeter costs a few KB, so
one process serves thousands, each on its own TCP port that the host's unchanged code reaches as
`socket://127.0.0.1:PORT` (Link, Meter, upgrade()). What it keeps of the real meter:
  - the link: the host's framing, a reply to every request and the cached one to a repeat, a
    damaged frame refused with bad_frame, sessions on the meter's own key (meterfw.auth.meter_key)
    with rising counters, sealed replies, ATTEST; bytes paced at baud/10 a second each way;
  - the transfer: DLMS class 18 states, 2 KiB blocks, a credit window of the board's
    transfer_window_bytes granted only once the window's flash work (the board's erase and
    program times) is done and never across an interval close, resume from the blocks in flash,
    deltas expanded against the running image (meterfw.delta);
  - verify: the slot's bytes parsed and checked by meterfw.image (payload hash, signatures by the
    key directory's public keys), the board, the security floor and the image initiated;
  - metering: intervals closed on wall-clock boundaries, each one's energy from the meter's seed
    in O(1) (a front-end reading at every boundary), so records are computed when they are read
    and the register moves by exactly each interval's energy;
  - activation and the boot: the reply leaves, the meter resets (its connection dropped, new ones
    unanswered for reboot_s), boots the new image on trial, flags the interval firmware-change and
    gives the verdict its `behaviour` decides, in the update state, status and event log as the
    device words them. The tables (event codes and names, update states, flags, health items,
    transfer timings) are read from the device's own sources.
Not modelled: power cuts, clock and meter-state changes, the relay; their privileged commands
(SET_STATE, TIME_SET, RELAY, RESET_REGISTERS, UNREJECT, RETRY) answer unknown_command.

    with LoadFleet(fleet_specs(100, "v1.mfw"), "keys/", interval_s=2) as fleet:
        for ep in fleet.endpoints:
            Meter(Link(ep["url"]), secret).status()

    python -m hil.loadmeter --count 1000 --image v1.mfw --keys keys/ --ports-file ports.json
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import hmac
import json
import logging
import os
import resource
import signal
import struct
import sys
import threading
import time
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

from meterfw import framing
from meterfw import protocol as P
from meterfw.auth import TAG, TRAILER, meter_key
from meterfw.delta import Delta, apply as apply_delta
from meterfw.image import ImageError, parse_head, parse_image, platform_api, read_bytes, version_tuple, verify_image
from meterfw.keys import KeysError, load_keys
from meterfw.paths import BOARD_NAMES, BOOTLOADER, FIRMWARE, board_dir

DEFAULT_BAUD = 115200
DEFAULT_INTERVAL_S = 900  # a real meter's; tests and benches pass a short one
DEFAULT_REBOOT_S = 1.0
BEHAVIOURS = ("good", "revert", "crash", "hang", "reject", "link_fault")
EXIT_USAGE = 64

_logger = logging.getLogger(__name__)


# --- the device's tables, read from its sources -------------------------------------------------

def _literals(path: Path) -> dict:
    """The module-level literals (and const() values) a device module defines."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "const":
                value = value.args[0]
            try:
                out[node.targets[0].id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):
                pass  # computed, not a table
    return out


def _rows(path: Path, name: str) -> list:
    """The rows (as AST tuples) of a table of tuples that names code, e.g. health.py's CHECKS."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return node.value.elts
    raise LookupError(f"{path} defines no {name}")


_EV = {**_literals(BOOTLOADER / "eventlog.py"), **_literals(FIRMWARE / "event_codes.py")}
_NAMES = {**_literals(BOOTLOADER / "event_names.py")["NAMES"], **_literals(FIRMWARE / "event_names.py")["NAMES"]}
_ST = _literals(BOOTLOADER / "protocol.py")  # the update's states
_IV = _literals(FIRMWARE / "intervals.py")  # interval flags
_READS = _literals(FIRMWARE / "interval_reads.py")
_XFER = _literals(BOOTLOADER / "transfer.py")
_REASONS = _literals(BOOTLOADER / "bootctl.py")["REASONS"]
_BOOTLOADER_VERSION = _literals(BOOTLOADER / "__init__.py")["VERSION"]
_HEALTH = _literals(FIRMWARE / "health.py")
_HEALTH_CHECKS = tuple((r.elts[0].value, _HEALTH[r.elts[1].id]) for r in _rows(FIRMWARE / "health.py", "CHECKS"))
_HEALTH_ITEMS = _literals(FIRMWARE / "state_schema.py")["HEALTH_ITEMS"]
_API = platform_api()

BLOCK_SIZE = _XFER["BLOCK_SIZE"]
_EVENT_PAGE = _literals(FIRMWARE / "app.py")["_EVENT_PAGE"]
_INTERVAL_PAGE = _READS["_PAGE"]
_QUOTA_RECORDS = 2400  # metering.py's default interval quota
_EVENTS_KEPT = 400  # the event log's two files of 200
_ALARMS_KEPT = _literals(FIRMWARE / "outbox.py")["CAPACITY"]
_REPLY_S = _literals(FIRMWARE / "activation.py")["_REPLY_MS"] / 1000  # the reply leaves before a reset
_AFTER_CLOSE_S = _literals(FIRMWARE / "update_agent.py")["_AFTER_CLOSE_MS"] / 1000
_HEALTH_SETTLE_S = _HEALTH["_SETTLE_MS"] / 1000  # the metrology check's wait: the check's length
_CLOCK_TOLERANCE_MS = _HEALTH["_CLOCK_TOLERANCE_MS"]
_TRIAL_ATTEMPTS = 3
_LATE_ESTIMATE_S = 1.0  # metering.py: a close later than this is estimated
_PUSH_WAITS_S = (1, 2, 4, 8)  # the outbox's retries of an unacknowledged alarm
_REVERT_CHECK = ("metrology", "front-end does not answer on its bus")


def _factory_state_hash() -> str:
    """The state hash of a meter on factory settings, from the meter state's own table."""
    rows = _rows(FIRMWARE / "state_schema.py", "FIELDS")
    fmt = "<" + "".join(r.elts[1].value for r in rows)
    return hashlib.sha256(struct.pack(fmt, *(ast.literal_eval(r.elts[2]) for r in rows))).hexdigest()


_STATE_HASH = _factory_state_hash()
# READ_STATE of a meter on factory settings (the load meter's state never changes).
_STATE = json.dumps({
    "version": 1, "seq": 0, "hash": _STATE_HASH, "pricing_events": [], "grid_events": [],
    "relay": {"connected": True, "fitted": True, "latched": "connected", "commanded": "connected", "agrees": True},
    "limiting": {"enabled": False, "limit_w": 0}, "load_control": {"state": "normal", "level_pct": 0},
    "dg_control": {"state": "allowed", "limit_w": 0}, "nem": {"enabled": False, "channels": ["delivered"]},
    "pulse_output": {"enabled": False, "wh_per_pulse": 1}, "multiplier": 1,
    "power_quality": {"nominal_v": 230, "sag_pct": 10, "swell_pct": 10},
    "prepayment": {"enabled": False, "credit_wh": 0, "emergency_wh": 0, "low_credit_wh": 0},
    "reporting": {"immediate": [148, 149, 146, 14, 16, 6, 152]},
    "health_severity": {item: "default" for item in _HEALTH_ITEMS},
}).encode()


def _boot_health(failed=None, snapshot=True) -> list:
    """The post-boot health check as status shows it: every item passes but `failed` ((item,
    message)); `snapshot` says whether a pre-switch snapshot was there to compare with."""
    out = []
    for check, severity in _HEALTH_CHECKS:
        message = None
        if check in ("han", "nan"):
            message = "not fitted on this board"
        elif check == "registers" and not snapshot:
            message = "no pre-switch snapshot to compare with"
        ok = not (failed and failed[0] == check)
        out.append({"check": check, "severity": severity, "ok": ok, "message": message if ok else failed[1]})
    return out


# Shared by every healthy meter: status holds a reference, not a copy.
_HEALTHY = _boot_health()
_HEALTHY_FRESH = _boot_health(snapshot=False)


# --- requests ------------------------------------------------------------------------------------

class Refused(Exception):
    """A handler's refusal: an ERROR reply with the device's code and a message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code, self.message = code, message


class _HangUp(Exception):
    """The meter drops its line now, without a reply (the link_fault behaviour)."""


def _query(payload: bytes) -> dict:
    try:
        q = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        raise Refused("bad_request", "request body is not JSON") from None
    if not isinstance(q, dict):
        raise Refused("bad_request", "request body must be a JSON object")
    return q


_NEEDED = object()
_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def _field(q: dict, key: str, kind, default=_NEEDED, lo=None, hi=None):
    """q[key] checked as the device checks it (bootloader/protocol.py's field)."""
    if key not in q:
        if default is _NEEDED:
            raise Refused("bad_request", f"{key} is missing")
        return default
    v = q[key]
    if not isinstance(v, kind) or kind is int and isinstance(v, bool):
        raise Refused("bad_request", f"{key} must be {_KINDS[kind]}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise Refused("bad_request", f"{key} must be from {lo} to {hi}")
    return v


def _choice(q: dict, key: str, choices: tuple, default: str) -> str:
    v = _field(q, key, str, default)
    if v not in choices:
        raise Refused("bad_request", f"{key} must be one of {', '.join(choices)}")
    return v


def _mix(seed: int, k: int) -> int:
    """64 pseudo-random bits from (seed, k): a meter's load, reproducible from its seed."""
    x = (k * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF
    return x ^ x >> 32


# --- what meters share ----------------------------------------------------------------------------

class _SlotImage:
    """A slot's bytes, held once however many meters hold them, with what parsing and checking
    them against the fleet's keys found (done once)."""
    __slots__ = ("data", "manifest", "image_id", "problems")

    def __init__(self, data: bytes, vendor_pub: bytes, utility_pub: bytes | None):
        self.data = data
        try:
            img = parse_image(data)
        except ImageError as e:
            self.manifest = self.image_id = None
            self.problems = [str(e)]
            return
        self.manifest, self.image_id = img.manifest, img.image_id
        self.problems = verify_image(img, vendor_pub, utility_pub)


class _Shared:
    """What every meter of a fleet shares: slot images by their bytes' SHA-256, the keys, the
    line and the interval."""

    def __init__(self, keys_dir, baud: int, interval_s: int, reboot_s: float):
        keys = load_keys(Path(keys_dir), private=False)
        if keys.utility_secret is None:
            raise KeysError(f"no utility.secret in {keys_dir}: each meter's key derives from it")
        self.vendor_pub, self.utility_pub = keys.vendor_public_raw, keys.utility_public_raw
        self.secret = keys.utility_secret
        self.baud, self.interval_s, self.reboot_s = baud, interval_s, reboot_s
        self.interval_ms = interval_s * 1000
        self.bytes_per_s = baud / 10  # 8N1
        self.block_ms = (BLOCK_SIZE + _XFER["_BLOCK_WIRE_EXTRA"]) * 1000 * 10 // baud + 1
        self._images: dict[bytes, _SlotImage] = {}
        self._boards: dict[str, tuple] = {}

    def slot_image(self, data: bytes) -> _SlotImage:
        digest = hashlib.sha256(data).digest()
        img = self._images.get(digest)
        if img is None:
            img = self._images[digest] = _SlotImage(data, self.vendor_pub, self.utility_pub)
        return img

    def board(self, name: str) -> tuple:
        """(blocks in a window, its flash work in s, the room a window's write needs before a
        close in ms) on board `name`, from its board.json as the transfer computes them."""
        if name not in self._boards:
            cfg = json.loads((board_dir(name) / "board.json").read_text())
            fl, window = cfg["flash"], cfg["transfer_window_bytes"]
            sectors = window // fl["block_size"]
            flash_s = sectors * (fl["erase_ms"] + fl["block_size"] // fl["page_size"] * fl["page_program_ms"]) / 1000
            flush_ms = sectors * _XFER["_SECTOR_WRITE_MS"] + _XFER["_FLUSH_MARGIN_MS"]
            self._boards[name] = (window // BLOCK_SIZE, flash_s, flush_ms)
        return self._boards[name]


# --- one meter ------------------------------------------------------------------------------------

class LoadMeter:
    """One meter's protocol state: serve(request frame) -> reply frame, as the device's link
    server and application answer it. Its I/O is its Endpoint's (`link`)."""
    __slots__ = ("serial", "board", "behaviour", "seed", "shared", "key", "link", "down", "requests", "faults",
                 "slots", "active", "previous", "trial", "confirmed", "floor", "rejected", "boot_reason",
                 "booted", "health", "switched", "display", "update", "notice", "held", "grant_end", "faulted",
                 "events", "event_seq", "alarms", "alarm_seq", "pushes", "_pushed_at", "_push_wait",
                 "_k0", "_fe0", "_fe0_rx", "_load_mwh", "_export_mwh", "_flags", "_down_since",
                 "_nonce", "_counter", "_counter_raw", "_last", "_life", "_window")

    def __init__(self, spec: Spec, image: _SlotImage, shared: _Shared, installed_s: float):
        self.serial, self.board, self.behaviour, self.seed = spec.serial, spec.board, spec.behaviour, spec.seed
        self.shared = shared
        self.key = meter_key(shared.secret, spec.serial)  # as provisioning derives it
        self._window = shared.board(spec.board)
        self.link = None  # the Endpoint
        self.down = False  # rebooting: nothing answers
        self._down_since = 0.0
        self.requests = self.faults = 0
        # Boot control: slot a runs the image it was provisioned with.
        self.slots = [image, None]
        self.active, self.previous = 0, None
        self.trial, self.confirmed, self.floor = False, True, 0
        self.rejected: list[bytes] = []
        self.boot_reason = "power-on"
        self.booted = time.monotonic() - (time.time() - installed_s)
        self.health = _HEALTHY_FRESH
        self.switched = False  # a pre-switch snapshot exists
        self.display = ""
        self.update = None  # the update's stored state (bootloader/update_state.py's dict)
        self.notice = None
        self.held: list[bytes] = []  # a window's blocks in RAM
        self.grant_end = 0
        self.faulted = False
        self.events = array("q")  # seq, time, code, value; flat
        self.event_seq = 1
        self.alarms: list[list] = []  # [seq, time, code, value, message, immediate]
        self.alarm_seq = 1
        self.pushes = 0
        self._pushed_at = float("-inf")
        self._push_wait = 0
        # Metering: intervals k0.. from installation; front-end readings come from the seed.
        r = _mix(spec.seed, -1)
        watts = 720 + r % 1441  # 0.72 to 2.16 kW, the sim's `mixed` load
        export_w = (r >> 16) % 301 if spec.seed % 3 == 0 else 0  # a third of the meters export
        self._load_mwh = watts * shared.interval_s * 5 // 18
        self._export_mwh = export_w * shared.interval_s * 5 // 18
        self._flags = None  # {interval index: flags}, for the few that carry any
        self._k0 = int(installed_s) // shared.interval_s
        self._fe0, self._fe0_rx = self._front_end_at(int(installed_s * 1000))
        self._nonce = None
        self._counter = 0
        self._counter_raw = b""
        self._last = None  # (request key, reply with its tag): a repeat gets it again
        self._life = None  # the task of an activation, a reboot, a boot's check
        self._log(_EV["BOOT"], 0, int(installed_s))
        self._log(_EV["HEALTH_PASSED"], len(_HEALTH_CHECKS), int(installed_s))

    # -- the link server ----------------------------------------------------------------------
    async def serve(self, ftype: int, seq: int, payload: bytes) -> bytes:
        """The frame answering one request, as bootloader/link.py answers it."""
        key = (ftype, seq, zlib.crc32(payload))
        if self._last is not None and self._last[0] == key:
            return framing.encode(ftype | framing.OK_BIT, seq, self._last[1])
        self.requests += 1
        handler = self.OPEN.get(ftype) or self.PRIVILEGED.get(ftype)
        if handler is None:
            return self._error(seq, "unknown_command", "unknown command 0x%02x" % ftype)
        sealed = None
        try:
            if ftype in self.PRIVILEGED:
                payload = self._check(ftype, payload)
                if ftype != P.UPD_BLOCK:  # a block's reply steers the flow only; verify seals the verdict
                    sealed = ftype
            result = await handler(self, payload)
            reply = bytes(result) if isinstance(result, (bytes, bytearray)) else json.dumps(result).encode()
            if sealed is not None:
                reply += self._seal(ftype | framing.OK_BIT, ftype, reply)
            self._last = (key, reply)
            return framing.encode(ftype | framing.OK_BIT, seq, reply)
        except Refused as e:
            return self._error(seq, e.code, e.message, sealed)
        except _HangUp:
            raise
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, struct.error) as e:
            return self._error(seq, "bad_request", f"bad request: {e}", sealed)
        except Exception as e:  # a defect of ours: counted (status shows it), and the line goes on
            self.faults += 1
            _logger.exception("load meter %s: request 0x%02x", self.serial, ftype)
            return self._error(seq, "internal", f"meter fault: {type(e).__name__}", sealed)

    def _error(self, seq: int, code: str, message: str, sealed_for: int | None = None) -> bytes:
        body = json.dumps({"code": code, "message": message}).encode()
        if sealed_for is not None:
            body += self._seal(framing.ERROR, sealed_for, body)
        return framing.encode(framing.ERROR, seq, body)

    def bad_frame(self) -> bytes:
        return self._error(0, "bad_frame", "frame dropped: CRC, size or length wrong")

    def line_closed(self) -> None:
        """The host hung up: a repeat can only come on the line it was asked on."""
        self._last = None

    # -- sessions (bootloader/auth.py) -----------------------------------------------------
    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self.key, b"".join(parts), hashlib.sha256).digest()[:TAG]

    def _check(self, ftype: int, payload: bytes) -> bytes:
        if self._nonce is None or len(payload) < TRAILER:
            raise Refused("auth_required", "privileged command: authenticate first")
        n = len(payload) - TRAILER
        body, counter_raw, tag = payload[:n], payload[n:n + 4], payload[n + 4:]
        if not hmac.compare_digest(tag, self._mac(self._nonce, bytes((ftype,)), counter_raw, body)):
            raise Refused("auth_failed", "authentication failed: wrong key or damaged request")
        (counter,) = struct.unpack("<I", counter_raw)
        if counter <= self._counter:
            raise Refused("replay", f"request counter {counter} already used")
        self._counter, self._counter_raw = counter, counter_raw
        return body

    def _seal(self, reply_type: int, request_type: int, reply: bytes) -> bytes:
        return self._mac(self._nonce, bytes((reply_type, request_type)), self._counter_raw, reply)

    async def cmd_challenge(self, _payload):
        self._nonce = os.urandom(16)
        self._counter = 0
        return {"nonce": self._nonce.hex()}

    async def cmd_attest(self, payload):
        if not payload or payload[0] in self.PRIVILEGED or payload[0] not in self.OPEN:
            raise Refused("bad_request", "attest takes an open command")
        return await self.OPEN[payload[0]](self, payload[1:])

    # -- metering --------------------------------------------------------------------------
    def _front_end(self, k: int) -> tuple[int, int]:
        """(delivered, received) mWh the front-end reads at the start of interval k: k base loads
        plus up to half of one, so each interval's energy lies within 0.5 to 1.5 of the base."""
        h = _mix(self.seed, k)
        return (k * self._load_mwh + h % (self._load_mwh // 2 + 1),
                k * self._export_mwh + (h >> 32) % (self._export_mwh // 2 + 1))

    def _front_end_at(self, t_ms: int) -> tuple[int, int]:
        iv = self.shared.interval_ms
        k, into = divmod(t_ms, iv)
        (a, a_rx), (b, b_rx) = self._front_end(k), self._front_end(k + 1)
        return a + (b - a) * into // iv, a_rx + (b_rx - a_rx) * into // iv

    def _registers(self, t_s: float) -> tuple[int, int]:
        fe, fe_rx = self._front_end_at(int(t_s * 1000))
        return fe - self._fe0, fe_rx - self._fe0_rx

    def _closed(self, t_s: float) -> int:
        """The seq of the last interval closed at t_s (0: none yet)."""
        return int(t_s) // self.shared.interval_s - self._k0

    def _record(self, seq: int) -> list:
        """Interval record `seq` as READ_INTERVALS rows carry it."""
        k = self._k0 + seq - 1
        a, a_rx = self._front_end(k) if seq > 1 else (self._fe0, self._fe0_rx)
        b, b_rx = self._front_end(k + 1)
        flags = self._flags.get(k, 0) if self._flags else 0
        if seq == 1:
            flags |= _IV["PARTIAL"]  # the meter started inside it
        iv = self.shared.interval_s
        return [seq, k * iv, iv, flags, b - a, b_rx - a_rx, b - self._fe0, b_rx - self._fe0_rx]

    def _mark(self, t_s: float, flags: int) -> None:
        if self._flags is None:
            self._flags = {}
        k = int(t_s) // self.shared.interval_s
        self._flags[k] = self._flags.get(k, 0) | flags

    def _ms_to_close(self) -> int:
        iv = self.shared.interval_ms
        now_ms = int(time.time() * 1000)
        return (now_ms // iv + 1) * iv - now_ms

    async def _settle(self) -> None:
        """Once the interval close due next has passed, with its flash writes."""
        await asyncio.sleep(self._ms_to_close() / 1000 + _AFTER_CLOSE_S)

    # -- the event log and the outbox --------------------------------------------------------
    def _log(self, code: int, value: int = 0, t_s: int | None = None) -> None:
        ev = self.events
        if len(ev) >= _EVENTS_KEPT * 4:
            del ev[:_EVENTS_KEPT * 2]  # the older file goes when the newer is full
        ev.extend((self.event_seq, int(time.time()) if t_s is None else t_s, code, value))
        self.event_seq += 1

    def _post(self, code: int, value: int, message: str, now: bool) -> None:
        if len(self.alarms) >= _ALARMS_KEPT:
            dropped = self.alarms.pop(0)
            self._log(_EV["OUTBOX_OVERFLOW"], dropped[0])
        self.alarms.append([self.alarm_seq, int(time.time()), code, value, message[:60], 1 if now else 0])
        self.alarm_seq += 1
        self._pushed_at, self._push_wait = float("-inf"), 0  # a fresh alarm goes at once

    def _alarm(self, a: list) -> dict:
        return {"seq": a[0], "time": a[1], "code": a[2], "name": _NAMES.get(a[2], "alarm"), "value": a[3],
                "message": a[4], "report": "immediate" if a[5] else "next-read"}

    def alarm_frames(self, new_line: bool) -> list[bytes]:
        """Alarms to push ahead of a reply: to a host that has just come on the line, and again
        after growing waits until it acknowledges them (outbox.py, at-least-once)."""
        now = time.monotonic()
        due = [a for a in self.alarms if a[5]]
        if not due or not new_line and now - self._pushed_at < _PUSH_WAITS_S[self._push_wait]:
            return []
        if not new_line and self._pushed_at > float("-inf"):
            self._push_wait = min(self._push_wait + 1, len(_PUSH_WAITS_S) - 1)
        self._pushed_at = now
        self.pushes += len(due)
        return [framing.encode(framing.ALARM, a[0] & 0xFF, json.dumps(self._alarm(a)).encode()) for a in due]

    # -- open commands -----------------------------------------------------------------------
    async def cmd_ping(self, payload):
        return payload

    def _head(self, slot: int) -> dict | None:
        img = self.slots[slot]
        if isinstance(img, bytearray):  # being written: its head is there once a window is
            return {"version": self.update["version"]} if img else None
        return img.manifest if img is not None else None

    def _running(self) -> _SlotImage:
        return self.slots[self.active]

    def _can_revert(self) -> bool:
        m = self._head(self.previous) if self.previous is not None else None
        return bool(m) and isinstance(self.slots[self.previous], _SlotImage) and m["security_version"] >= self.floor

    def status(self) -> dict:
        now = time.time()
        heads = [self._head(0), self._head(1)]
        reg, reg_rx = self._registers(now)
        running = heads[self.active]
        uptime_s = time.monotonic() - self.booted
        return {
            "board": self.board, "serial": self.serial, "active_slot": "ab"[self.active],
            "active_version": running and running["version"], "confirmed": self.confirmed, "trial": self.trial,
            "slots": {"ab"[s]: {"version": m and m["version"]} for s, m in enumerate(heads)},
            "boot_reason": self.boot_reason, "bootloader_version": _BOOTLOADER_VERSION,
            "bootloader": {"version": _BOOTLOADER_VERSION, "copy": "a", "trial": False, "security_version": 0,
                           "floor": 0},
            "security_floor": self.floor, "can_revert": self._can_revert(),
            "rejected": [x.hex() for x in self.rejected], "active_image_id": self._running().image_id.hex(),
            "register_wh": reg / 1000, "register_mwh": reg, "register_received_mwh": reg_rx,
            "state_hash": _STATE_HASH, "alarms_pending": len(self.alarms),
            "uptime_s": int(uptime_s), "time_s": int(now),
            "interval_s": self.shared.interval_s, "health": self.health, "update": self._update_summary(),
            "metering": {"closes": self._closed(now) - max(self._closed(now - uptime_s), 0), "late_ms": []},
            "link_faults": self.faults,
        }

    async def cmd_status(self, _payload):
        return self.status()

    async def cmd_update_state(self, _payload):
        out = self._update_summary()
        out["notice"] = self.notice
        return out

    async def cmd_read_intervals(self, payload):
        q = _query(payload)
        limit = max(1, min(_field(q, "limit", int, _INTERVAL_PAGE), _INTERVAL_PAGE))
        since_seq, since_s = _field(q, "since_seq", int, 0), _field(q, "since_s", int, 0)
        last = self._closed(time.time())
        first = max(1, last - _QUOTA_RECORDS + 1)
        seq = max(since_seq, first, -(-since_s // self.shared.interval_s) - self._k0 + 1)
        rows = [self._record(n) for n in range(seq, min(last, seq + limit) + 1)]
        return {"fields": _READS["_PAGE_FIELDS"], "flag_names": _READS["FLAG_NAMES"], "more": len(rows) > limit,
                "rows": rows[:limit], "first_seq": first if last > 0 else None}

    async def cmd_read_events(self, payload):
        q = _query(payload)
        limit = max(1, min(_field(q, "limit", int, _EVENT_PAGE), _EVENT_PAGE))
        since = _field(q, "since_seq", int, 0)
        ev, rows = self.events, []
        for i in range(0, len(ev), 4):
            if ev[i] >= since:
                rows.append(ev[i:i + 4].tolist())
                if len(rows) > limit:
                    break
        return {"fields": ("seq", "time", "code", "value"), "rows": rows[:limit],
                "names": {r[2]: _NAMES.get(r[2], "event") for r in rows[:limit]}, "more": len(rows) > limit}

    async def cmd_read_registers(self, _payload):
        now = time.time()
        reg, reg_rx = self._registers(now)
        return {"time_s": int(now), "delivered_mwh": reg, "received_mwh": reg_rx, "net_mwh": reg - reg_rx,
                "lifetime_delivered_mwh": reg, "lifetime_received_mwh": reg_rx, "resets": 0, "multiplier": 1,
                "prepayment": None, "last_interval_seq": max(self._closed(now), 0),
                "alarms": [self._alarm(a) for a in self.alarms if not a[5]]}

    async def cmd_read_state(self, _payload):
        return _STATE

    async def cmd_health(self, payload):
        """HEALTH: the check on request, which waits for the front-end as the device's does."""
        host_ms = _field(_query(payload), "host_time_ms", int, None, lo=0)
        now_ms = int(time.time() * 1000)
        a = sum(self._registers(now_ms / 1000))
        await asyncio.sleep(_HEALTH_SETTLE_S)
        advanced = sum(self._registers(time.time())) - a
        failing = _REVERT_CHECK if self.trial and self.behaviour == "revert" else None
        offset_ms = None if host_ms is None else now_ms - host_ms
        values = {"metrology": advanced, "clock": offset_ms, "data": max(self._closed(now_ms / 1000), 0),
                  "registers": 0 if self.switched else None, "meter_state": 0, "link": self.requests}
        items = []
        for row in _boot_health(failing, self.switched):
            status = "absent" if row["check"] in ("han", "nan") else "pass" if row["ok"] else "fail"
            if row["check"] == "clock" and offset_ms is not None and abs(offset_ms) > _CLOCK_TOLERANCE_MS:
                status = "fail"
                row["message"] = f"clock is {offset_ms} ms off the host's (tolerance {_CLOCK_TOLERANCE_MS} ms)"
            items.append({**row, "status": status, "ok": status != "fail", "value": values.get(row["check"])})
        return {"items": items, "ok": all(i["ok"] for i in items if i["severity"] != "info")}

    async def cmd_time_get(self, _payload):
        return {"time_ms": int(time.time() * 1000), "valid": True}

    async def cmd_read_alarms(self, _payload):
        return {"alarms": [self._alarm(a) for a in self.alarms], "pushes": self.pushes}

    async def cmd_read_display(self, _payload):
        return {"text": self.display}

    # -- privileged commands -------------------------------------------------------------------
    async def cmd_ack_alarms(self, payload):
        seqs = _field(_query(payload), "seqs", list)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seqs):
            raise Refused("bad_request", "seqs must be a list of alarm sequence numbers")
        keep = [a for a in self.alarms if a[0] not in seqs]
        n = len(self.alarms) - len(keep)
        if n:
            self.alarms = keep
            self._log(_EV["ALARMS_ACKED"], n)
        return {"acknowledged": n, "pending": len(self.alarms)}

    async def cmd_notice(self, payload):
        q = _query(payload)
        notice = {"version": _field(q, "version", str), "image_id": _field(q, "image_id", str, ""),
                  "size": _field(q, "size", int, 0, lo=0, hi=0xFFFFFFFF), "when": _field(q, "when", str, "boundary"),
                  "received_s": int(time.time())}
        if len(notice["version"]) > 32 or len(notice["image_id"]) > 64 or len(notice["when"]) > 32:
            raise Refused("bad_request", "notice fields too long")
        self.notice = notice
        self._log(_EV["UPGRADE_NOTICE"], notice["size"])
        self.display = f"Firmware {notice['version']} available"
        return {"noted": True, "update": self._update_summary()}

    async def cmd_initiate(self, head, base: bytes | None = None):
        if self.trial:
            raise Refused("on_trial", f"version {self._head(self.active)['version']} is on trial: wait for its verdict "
                                      "(confirmed or reverted) before another download")
        try:
            img = parse_head(head)
        except ImageError as e:
            raise Refused("bad_image", str(e)) from None
        m = img.manifest
        if m["board"] != self.board:
            raise Refused("wrong_board", f"image is for board {m['board']}, this meter is {self.board}")
        if m["kind"] == "bootloader":
            self._admit_bootloader(m)
        if version_tuple(m["min_bootloader"]) > version_tuple(_BOOTLOADER_VERSION):
            raise Refused("bootloader_too_old",
                          f"image needs bootloader {m['min_bootloader']}, meter has {_BOOTLOADER_VERSION}")
        if m["api"] > _API:
            raise Refused("platform_too_old", f"image needs platform API {m['api']}, this bootloader provides {_API}")
        if m["security_version"] < self.floor:
            raise Refused("rollback",
                          f"security version {m['security_version']} is below the meter's floor {self.floor}")
        if img.image_id in self.rejected:
            raise Refused("rejected", f"image {m['version']} was rejected before")
        if img.image_id == self._running().image_id:
            raise Refused("already_active", f"version {m['version']} is already running")
        slot = 1 - self.active
        if self.previous == slot:  # about to be overwritten: no longer a revert target
            self.previous = None
        self.slots[slot] = bytearray()
        self.held = []
        size = len(head) + m["payload_size"]
        self.update = {"status": _ST["INITIATED"], "kind": m["kind"], "slot": slot, "size": size,
                       "id": img.image_id.hex(), "version": m["version"], "result": None, "reason": None,
                       "base": base and base.hex()}
        self._log(_EV["DOWNLOAD_STARTED"], size)
        self.grant_end = 0
        await self._grant()
        return {"block_size": BLOCK_SIZE, "first_not_transferred_block": 0, "blocks": self._blocks(), "next": 0,
                "window": self.grant_end, "signature_ms": None}  # the signatures are checked at verify

    def _admit_bootloader(self, m: dict) -> None:
        """A bootloader image: refused as the device refuses one; one it would take is not
        modelled here."""
        theirs, mine = version_tuple(m["version"]), version_tuple(_BOOTLOADER_VERSION)
        if theirs == mine:
            raise Refused("already_active", f"bootloader {m['version']} is already running")
        if theirs < mine:
            raise Refused("downgrade", f"bootloader {m['version']} is older than the running {_BOOTLOADER_VERSION}")
        raise Refused("bad_image", "a load meter does not take bootloader images")

    async def cmd_initiate_delta(self, payload):
        base = bytes(payload[:32])
        running = self._running()
        if base != running.image_id:
            raise Refused("wrong_base", f"the delta applies to image {base.hex()[:16]}; this meter runs "
                                        f"{running.image_id.hex()[:16]} ({running.manifest['version']})")
        return await self.cmd_initiate(bytes(payload[32:]), base)

    # -- the transfer (bootloader/transfer.py) ----------------------------------------------
    def _blocks(self) -> int:
        return (self.update["size"] + BLOCK_SIZE - 1) // BLOCK_SIZE

    def _flashed(self) -> int:
        slot = self.slots[self.update["slot"]]
        return len(slot) if isinstance(slot, bytearray) else len(slot.data)

    def _first_missing(self) -> int:
        flashed = self._flashed()
        return self._blocks() if flashed == self.update["size"] else flashed // BLOCK_SIZE

    def _next_block(self) -> int:
        return self._first_missing() + len(self.held)

    def _room(self, nxt: int) -> int:
        left = self._blocks() - nxt
        return min(self._window[0] - len(self.held), left) if left > 0 else 0

    def _fit(self, want: int) -> int:
        """How many of `want` blocks arrive before the next interval close."""
        if want <= 0:
            return 0
        margin = _XFER["_GRANT_MARGIN_MS"]
        if self.shared.block_ms + margin >= self.shared.interval_ms:
            return 1  # no block fits between two closes on so slow a line: one at a time
        return max(0, min(want, (self._ms_to_close() - margin) // self.shared.block_ms))

    async def _grant(self) -> None:
        nxt = self._next_block()
        want = self._room(nxt)
        w = self._fit(want)
        while want and not w:
            await self._settle()  # the meter writes flash soon: grant after that
            w = self._fit(want)
        self.grant_end = nxt + w

    def _block_reply(self) -> bytes:
        nxt = self._next_block()
        return struct.pack("<IHB", nxt, max(self.grant_end - nxt, 0), self._flashed() == self.update["size"])

    def _update_summary(self) -> dict:
        s = self.update
        if s is None:
            return {"status": _ST["NOT_INITIATED"], "kind": "firmware", "version": None, "image_id": None,
                    "result": None, "reason": None}
        out = {"status": s["status"], "kind": s["kind"], "version": s["version"], "image_id": s["id"],
               "result": s["result"], "reason": s["reason"]}
        out.update((k, s[k]) for k in ("registers", "ack", "activate_at_s", "base") if k in s)
        if s["status"] == _ST["INITIATED"]:
            # A fresh grant: a host asks after a break, and an old grant may reach a close by now.
            nxt = self._next_block()
            self.grant_end = nxt + self._fit(self._room(nxt))
            out.update(size=s["size"], block_size=BLOCK_SIZE, first_not_transferred_block=self._first_missing(),
                       next_block=nxt, window=self.grant_end - nxt)
        return out

    async def cmd_block(self, payload):
        s = self.update
        if s is None or s["status"] != _ST["INITIATED"]:
            raise Refused("not_initiated", "no transfer in progress")
        if s["base"]:
            payload = self._expand(payload)
        (n,) = struct.unpack_from("<I", payload, 0)
        first = self._first_missing()
        if n < first or n > first + len(self.held):
            return self._block_reply()  # in flash already, or after a gap: the reply says where to go on
        blocks = self._blocks()
        if n >= blocks:
            raise Refused("bad_block", f"block {n} is past the end of the image")
        size = min(BLOCK_SIZE, s["size"] - n * BLOCK_SIZE)
        if len(payload) - 4 != size:
            raise Refused("bad_block", f"block {n} has {len(payload) - 4} bytes, not {size}")
        del self.held[n - first:]  # a block sent again while in RAM replaces it and what followed
        self.held.append(payload[4:])
        if len(self.held) == self._window[0] or n + 1 == blocks:
            await self._write_window()
            if self.behaviour == "link_fault" and not self.faulted and self._first_missing() * 2 >= blocks:
                self.faulted = True
                raise _HangUp()
        if n + 1 >= self.grant_end:
            await self._grant()  # the host has used its credit: only now may it send more
        return self._block_reply()

    def _expand(self, payload: bytes) -> bytes:
        """A delta block (n, then its recipe) as the block it makes from the running image."""
        if len(payload) < 8:
            raise Refused("bad_block", "a delta block is its number and a recipe of 4 bytes at least")
        running = self._running()
        if self.update["base"] != running.image_id.hex():
            raise Refused("wrong_base", "the delta under way applies to another image: initiate again")
        try:
            block = apply_delta(running.data, Delta(running.image_id, BLOCK_SIZE, b"", [payload[4:]], None, 0))
        except (struct.error, zlib.error, ValueError, IndexError) as e:
            (n,) = struct.unpack_from("<I", payload)
            raise Refused("bad_block", f"delta block {n} is malformed: {e}") from None
        return payload[:4] + block

    async def _write_window(self) -> None:
        """The window is complete: into the slot, then the flash work's time, no block arriving."""
        _, flash_s, flush_ms = self._window
        if self._ms_to_close() < flush_ms:
            await self._settle()  # an interval close due meanwhile goes first
        s = self.update
        slot = self.slots[s["slot"]]
        slot += b"".join(self.held)
        self.held = []
        if len(slot) == s["size"]:
            # Complete: the bytes are shared with every meter holding the same image.
            self.slots[s["slot"]] = self.shared.slot_image(bytes(slot))
            self._log(_EV["DOWNLOAD_DONE"], s["size"])
        await asyncio.sleep(flash_s)

    async def cmd_verify(self, _payload):
        s = self.update
        if s is None or s["status"] not in (_ST["INITIATED"], _ST["VERIFY_FAILED"], _ST["VERIFIED"]):
            raise Refused("not_initiated", "no image to verify")
        if self._flashed() != s["size"]:
            raise Refused("incomplete", f"transfer incomplete: {self._flashed()} of {s['size']} bytes")
        t0 = time.perf_counter()
        slot = self.slots[s["slot"]]
        why = self._problem(slot)
        if why:
            s.update(status=_ST["VERIFY_FAILED"], reason=why, result="rejected")
            self._log(_EV["FW_VERIFY_FAILED"], s["slot"])
            raise Refused("verify_failed", f"verification failed: {why}")
        s["status"] = _ST["VERIFIED"]
        self._log(_EV["FW_READY"], s["slot"])
        return {"status": s["status"], "version": slot.manifest["version"],
                "verify_ms": round((time.perf_counter() - t0) * 1000)}

    def _problem(self, slot: _SlotImage) -> str | None:
        """Why the slot's image may not be activated, or None (slots.check and the initiate's id)."""
        if self.behaviour == "reject":
            return "refused by this load meter (behaviour reject)"
        if slot.problems:
            return slot.problems[0]
        m = slot.manifest
        if m["board"] != self.board:
            return f"image is for board {m['board']}"
        if m["security_version"] < self.floor:
            return f"security version {m['security_version']} is below the floor {self.floor}"
        if slot.image_id.hex() != self.update["id"]:
            return "image differs from the one initiated"
        return None

    # -- activation, revert and the boot -----------------------------------------------------
    async def cmd_activate(self, payload):
        q = _query(payload)
        when = _choice(q, "when", ("now", "boundary", "at"), "boundary")
        registers = _choice(q, "registers", ("preserve", "reset"), "preserve")
        ack = _choice(q, "ack", ("immediate", "next-read"), "immediate")
        at_s = _field(q, "at_s", int, lo=0, hi=0xFFFFFFFF) if when == "at" else None
        s = self.update
        if s is None or s["status"] != _ST["VERIFIED"]:
            raise Refused("not_verified", "verify the image before activating it")
        if self.slots[s["slot"]].manifest["security_version"] < self.floor:
            raise Refused("rollback", f"the image is below the meter's security floor {self.floor}")
        now_s = int(time.time())
        if when == "now":
            t_s = now_s
        elif when == "boundary":
            t_s = (now_s // self.shared.interval_s + 1) * self.shared.interval_s
        else:
            if at_s < now_s - 2:
                raise Refused("bad_request", f"activation time {at_s} is in the past (meter time {now_s})")
            t_s = max(at_s, now_s)
        s.update(registers=registers, ack=ack, when=when, activate_at_s=t_s)
        self._start(self._activate_at(s, t_s, when))
        return {"when": when, "activate_at_s": t_s, "deferred_s": 0, "boundary_s": t_s if when == "boundary" else None,
                "meter_time_s": now_s, "registers": registers, "ack": ack}

    async def cmd_revert(self, _payload):
        if not self._can_revert():
            raise Refused("no_previous", "no previous image to revert to")
        self._start(self._operator_revert())
        return {"reverting": True}

    def _start(self, coro) -> None:
        """The meter's own work beside the link (an activation waiting, a reboot, a boot's check):
        one at a time, as a reset ends whatever was waiting."""
        self.stop()
        self._life = asyncio.get_running_loop().create_task(coro)

    def stop(self):
        """End the meter's own work; returns its task to wait for, if any."""
        life, self._life = self._life, None
        if life is not None and not life.done():
            life.cancel()
        return life

    async def _reply_leaves(self) -> None:
        await asyncio.sleep(max(_REPLY_S, self.link.tx_busy_s() if self.link else 0))

    async def _activate_at(self, s: dict, t_s: int, when: str) -> None:
        await self._reply_leaves()
        # At its time; for a boundary, once the close there has been written.
        wait_s = t_s - time.time() + (_AFTER_CLOSE_S if when == "boundary" else 0)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        if s is not self.update or s["status"] != _ST["VERIFIED"]:
            return  # initiated again meanwhile: nothing to activate
        s["status"] = _ST["ACTIVATING"]
        self._snapshot()
        self._log(_EV["FW_ACTIVATED"], s["slot"])
        self.previous, self.active = self.active, s["slot"]
        self.trial, self.confirmed = True, False
        await self._reboot("activate")

    async def _operator_revert(self) -> None:
        await self._reply_leaves()
        await self._revert()

    def _snapshot(self) -> None:
        self.switched = True  # the next image's registers and state check compare with it

    async def _revert(self, reject: bool = False, why: str | None = None) -> None:
        """Back to the previous image (switching.py's revert, or the boot's), and reset."""
        if not reject:
            self._snapshot()
        if reject:
            if self._running().image_id not in self.rejected:
                self.rejected = (self.rejected + [self._running().image_id])[-4:]
            if why:
                self._record_failure(why)
        self.active, self.previous = self.previous, self.active
        self.trial, self.confirmed = False, True
        self._log(_EV["REVERTED"], self.active)
        await self._reboot("revert")

    def _open_activation(self) -> bool:
        s = self.update
        return s is not None and s["status"] in (_ST["ACTIVATING"], _ST["ACTIVATED"]) and s["result"] in (None, "trial")

    def _record_failure(self, why: str) -> None:
        if self._open_activation():
            self.update.update(status=_ST["ACTIVATION_FAILED"], result="reverted", reason=why)

    async def _reboot(self, reason: str) -> None:
        """The reset: the line drops, RAM is gone, and nothing answers for reboot_s."""
        if not self.down:  # a crash's second reset: still down since the first
            self.down, self._down_since = True, time.time()
        self._nonce, self._last, self.held = None, None, []
        if self.link is not None:
            self.link.hang_up()
        await asyncio.sleep(self.shared.reboot_s)
        await self._boot(reason)

    async def _boot(self, reason: str) -> None:
        """The bootloader's boot (selection.py, boot.py), then the application's post-boot tasks
        and health check (boot_tasks.py), with the verdict the meter's behaviour decides."""
        now = time.time()
        self._log(_EV["BOOT"], _REASONS.index(reason))
        if self.trial:
            self._log(_EV["TRIAL_ATTEMPT"], _TRIAL_ATTEMPTS - 1)
            if self.behaviour == "crash":
                self._log(_EV["APP_CRASH"], self.active)
                await self._revert(True, "image on trial crashed: crash at import")
                return
        # Boundaries passed while down longer than a close may be late: those intervals are estimated.
        iv = self.shared.interval_s
        late = range((int(self._down_since) // iv + 1) * iv, int(now - _LATE_ESTIMATE_S) + 1, iv)
        for end_s in late:
            self._mark(end_s - 1, _IV["ESTIMATED"])
        if late:
            self._mark(now, _IV["ESTIMATED"])  # it opened from a reading taken late
        self.boot_reason, self.booted, self.health = reason, time.monotonic(), None
        self.down = False
        running = self._running().manifest["version"]
        if reason in ("activate", "revert"):
            self._mark(now, _IV["FIRMWARE_CHANGE"])
        if self._open_activation():  # update_state.settle
            s = self.update
            if self._running().image_id.hex() == s["id"]:
                s.update(status=_ST["ACTIVATED"], result="trial")
            else:
                s.update(status=_ST["ACTIVATION_FAILED"], result="reverted",
                         reason=s["reason"] or "the meter went back to the previous image")
        if reason == "activate" and self.trial:
            self.display = f"Installing meter software {running}; supply unaffected"
        elif reason == "revert":
            self.display = f"Meter software update undone; running {running}"
        if self.trial and self.behaviour == "hang":
            return  # its check never ends: no verdict until an operator reverts
        await asyncio.sleep(_HEALTH_SETTLE_S)
        if self.trial and self.behaviour == "revert":
            check, message = _REVERT_CHECK
            self.health = _boot_health(_REVERT_CHECK, self.switched)
            immediate = self.update is None or self.update.get("ack") != "next-read"
            self._post(_EV["HEALTH_CRITICAL"], _HEALTH_ITEMS.index(check), f"{check}: {message}", immediate)
            self._log(_EV["MEASUREMENT_ERROR"], 0)
            self._log(_EV["HEALTH_FAILED"], 1)
            await self._revert(True, f"critical health check failed: {check}: {message}")
            return
        self.health = _HEALTHY if self.switched else _HEALTHY_FRESH
        self._log(_EV["HEALTH_PASSED"], len(_HEALTH_CHECKS))
        if self.trial:
            self.trial, self.confirmed = False, True
            self.floor = max(self.floor, self._running().manifest["security_version"])
            self._log(_EV["CONFIRMED"], self.floor)
            if self.previous is not None and not self._can_revert():
                self._log(_EV["REVERT_TARGET_DROPPED"], self._head(self.previous)["security_version"])
                self.previous = None
            self.display = f"Meter software updated to {running}"
        if self.update is not None and self.update["result"] == "trial":
            self.update["result"] = "confirmed"

    OPEN = {P.PING: cmd_ping, P.STATUS: cmd_status, P.READ_INTERVALS: cmd_read_intervals,
            P.READ_EVENTS: cmd_read_events, P.UPD_STATE: cmd_update_state, P.READ_REGISTERS: cmd_read_registers,
            P.READ_STATE: cmd_read_state, P.HEALTH: cmd_health, P.TIME_GET: cmd_time_get,
            P.READ_ALARMS: cmd_read_alarms, P.READ_DISPLAY: cmd_read_display, P.AUTH_CHALLENGE: cmd_challenge}
    PRIVILEGED = {P.ATTEST: cmd_attest, P.UPD_NOTICE: cmd_notice, P.UPD_INITIATE: cmd_initiate,
                  P.UPD_DELTA: cmd_initiate_delta, P.UPD_BLOCK: cmd_block, P.UPD_VERIFY: cmd_verify,
                  P.UPD_ACTIVATE: cmd_activate, P.REVERT: cmd_revert, P.ACK_ALARMS: cmd_ack_alarms}

    # -- for tests and benches ---------------------------------------------------------------
    def slot_bytes(self, slot: str) -> bytes | None:
        """The image bytes slot "a" or "b" holds (None when empty or mid-transfer)."""
        img = self.slots["ab".index(slot)]
        return img.data if isinstance(img, _SlotImage) else None


# --- the line -------------------------------------------------------------------------------------

_RX_BYTES = 4096  # read at most this much at once: the rest waits in the socket, as in a UART's ring
_SLICE_S = 0.01  # a reply goes on the line in pieces of about this much line time


class Endpoint:
    """One meter's TCP port and line: bytes paced as a UART carries them at baud/10 a second,
    each way, and the newest connection takes the line (a meter has one UART)."""
    __slots__ = ("meter", "server", "port", "_bps", "_conn", "_tx_free")

    def __init__(self, meter: LoadMeter):
        self.meter = meter
        meter.link = self
        self.server = None
        self.port = 0
        self._bps = meter.shared.bytes_per_s
        self._conn = None  # (task, writer) of the connection on the line
        self._tx_free = 0.0  # when the line finishes the bytes written so far (loop time)

    async def start(self, host: str) -> None:
        # No SO_REUSEADDR: it buys nothing on a port the system picks, and with it the kernel's
        # search for a free port slows to ~1 ms a port past 7,000 endpoints.
        self.server = await asyncio.start_server(self._serve, host, 0, reuse_address=False)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        """Stop listening and drop the line; returns the connection's task to wait for, if any."""
        task = self.hang_up()
        if self.server is not None:
            self.server.close()
        return task

    def hang_up(self):
        """Drop the connection on the line, if any (a reset, or a newer connection); returns its
        task."""
        if self._conn is None:
            return None
        (task, writer), self._conn = self._conn, None
        writer.transport.abort()
        if task is not asyncio.current_task():
            task.cancel()
        self.meter.line_closed()
        return task

    def tx_busy_s(self) -> float:
        return max(0.0, self._tx_free - asyncio.get_running_loop().time())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.meter.down:
            writer.transport.abort()  # a meter resetting has no line: the connection drops at once
            return
        self.hang_up()
        me = asyncio.current_task()
        self._conn = (me, writer)
        loop = asyncio.get_running_loop()
        meter, decoder, rx_free, new_line = self.meter, framing.Decoder(), 0.0, True
        try:
            while True:
                data = await reader.read(_RX_BYTES)
                if not data:
                    return
                # Bytes are there once the last of them would have arrived on the line.
                now = loop.time()
                rx_free = max(rx_free, now) + len(data) / self._bps
                await asyncio.sleep(rx_free - now)
                if meter.down:
                    return
                dropped = decoder.dropped
                for f in decoder.feed(data):
                    out = meter.alarm_frames(new_line)
                    new_line = False
                    out.append(await meter.serve(f.type, f.seq, f.payload))
                    for frame in out:
                        await self._send(writer, frame)
                if decoder.dropped != dropped:
                    await self._send(writer, meter.bad_frame())
        except (_HangUp, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # hung up (a reset, a newer connection, the fleet stopping): the line's end, no error
        finally:
            if self._conn is not None and self._conn[0] is me:
                self._conn = None
                meter.line_closed()
            writer.transport.abort()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data` as the line carries it: each piece once its last byte would be out."""
        loop = asyncio.get_running_loop()
        step = max(16, int(self._bps * _SLICE_S))
        for i in range(0, len(data), step):
            part = data[i:i + step]
            now = loop.time()
            self._tx_free = max(self._tx_free, now) + len(part) / self._bps
            await asyncio.sleep(self._tx_free - now)
            writer.write(part)
        await writer.drain()


# --- fleets ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """One load meter: its serial, the image file it runs at start, its board, behaviour and the
    seed of its load."""
    serial: str
    image: Path
    board: str = "sim"
    behaviour: str = "good"
    seed: int = 1


def serial_of(n: int) -> str:
    return f"LM{n:06d}"


def fleet_specs(count: int, image, *, board: str = "sim", behaviours: dict | None = None, seed: int = 1) -> list[Spec]:
    """`count` meters LM000001... running `image`, each `good` unless `behaviours` ({serial:
    behaviour}) says otherwise, each with a seed of its own (seed + its number)."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"a fleet needs at least one meter, not {count!r}")
    behaviours = dict(behaviours or {})
    unknown = sorted(set(behaviours) - {serial_of(n) for n in range(1, count + 1)})
    if unknown:
        raise ValueError(f"no meter {unknown[0]} in a fleet of {count} (LM000001 to {serial_of(count)})")
    return [Spec(serial_of(n), Path(image), board, behaviours.get(serial_of(n), "good"), seed + n)
            for n in range(1, count + 1)]


def raise_fd_limit(need: int) -> int:
    """RLIMIT_NOFILE raised to its hard limit; ValueError when `need` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and need > hard:
        raise ValueError(f"{need} file descriptors needed and the hard limit is {hard} (ulimit -Hn)")
    return hard


class LoadFleet:
    """Load meters on one event loop, each on its own TCP port (port 0: the system picks).

    `async with LoadFleet(...) as fleet` serves them on the running loop; `with LoadFleet(...)
    as fleet` serves them on a loop in a background thread, for synchronous code (tests, the
    bench). Either way the block's end stops every endpoint, connection and task.
    `metered_s`: how long the meters have metered before now (a history of intervals to read)."""

    def __init__(self, specs: list[Spec], keys, *, baud: int = DEFAULT_BAUD, interval_s: int = DEFAULT_INTERVAL_S,
                 reboot_s: float = DEFAULT_REBOOT_S, metered_s: float = 0, host: str = "127.0.0.1"):
        if not specs:
            raise ValueError("a fleet needs at least one meter")
        if len({s.serial for s in specs}) != len(specs):
            raise ValueError("two meters of the fleet have the same serial")
        for s in specs:
            if s.behaviour not in BEHAVIOURS:
                raise ValueError(f"{s.serial}: unknown behaviour {s.behaviour!r}: one of {', '.join(BEHAVIOURS)}")
            if s.board not in BOARD_NAMES:
                raise ValueError(f"{s.serial}: unknown board {s.board!r}: one of {', '.join(BOARD_NAMES)}")
        if not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"baud must be a positive integer, not {baud!r}")
        if not isinstance(interval_s, int) or interval_s <= 0:
            raise ValueError(f"interval_s must be a positive integer, not {interval_s!r}")
        if reboot_s < 0 or metered_s < 0:
            raise ValueError("reboot_s and metered_s cannot be negative")
        self._specs, self._host, self._metered_s = list(specs), host, metered_s
        self._shared = _Shared(keys, baud, interval_s, reboot_s)
        self._images = {p: self._first_image(p) for p in {s.image for s in specs}}
        for s in specs:
            if self._images[s.image].manifest["board"] != s.board:
                raise ValueError(f"{s.serial} is a {s.board} meter and {s.image} is for board "
                                 f"{self._images[s.image].manifest['board']}")
        self.meters: dict[str, LoadMeter] = {}
        self._endpoints: list[Endpoint] = []
        self._loop = self._thread = None

    def _first_image(self, path: Path) -> _SlotImage:
        img = self._shared.slot_image(read_bytes(path, "image"))
        if img.problems:
            raise ImageError(f"{path} cannot run on a meter with these keys: {img.problems[0]}")
        if img.manifest["kind"] != "firmware":
            raise ImageError(f"{path} is a {img.manifest['kind']} image; a meter starts with a firmware image")
        return img

    @property
    def endpoints(self) -> list[dict]:
        """[{serial, url, board, behaviour}] of every meter, in the fleet's order."""
        return [{"serial": ep.meter.serial, "url": f"socket://{self._host}:{ep.port}", "board": ep.meter.board,
                 "behaviour": ep.meter.behaviour} for ep in self._endpoints]

    def meter(self, serial: str) -> LoadMeter:
        return self.meters[serial]

    async def start(self) -> None:
        raise_fd_limit(len(self._specs) + 64)
        installed_s = time.time() - self._metered_s
        try:
            for spec in self._specs:
                meter = LoadMeter(spec, self._images[spec.image], self._shared, installed_s)
                ep = Endpoint(meter)
                await ep.start(self._host)
                self.meters[spec.serial] = meter
                self._endpoints.append(ep)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        tasks = [t for ep in self._endpoints for t in (ep.close(), ep.meter.stop()) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for ep in self._endpoints:
            await ep.server.wait_closed()
        for _ in range(2):
            await asyncio.sleep(0)  # aborted transports close their sockets on the loop's next turns

    async def __aenter__(self) -> LoadFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- on a background thread ------------------------------------------------------------
    def __enter__(self) -> LoadFleet:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loadmeter-fleet", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), self._loop).result()
        except BaseException:
            self._end_thread()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result()
        finally:
            self._end_thread()

    def _end_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None


async def serve_fleet(fleet: LoadFleet, ready=None) -> None:
    """Serve `fleet` on the running loop until SIGTERM or SIGINT (or until cancelled), calling
    ready(endpoints) once every endpoint listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with fleet:
            if ready is not None:
                ready(fleet.endpoints)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


# --- the command line -----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"loadmeter: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _behaviour(text: str) -> tuple[str, str]:
    serial, sep, behaviour = text.partition("=")
    if not sep or behaviour not in BEHAVIOURS:
        raise argparse.ArgumentTypeError(f"--behaviour takes SERIAL=BEHAVIOUR with BEHAVIOUR one of "
                                         f"{', '.join(BEHAVIOURS)}, not {text!r}")
    return serial, behaviour


def _number(kind, least):
    """An argparse type: a number of `kind` from `least` on."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not v >= least:  # NaN too
            raise argparse.ArgumentTypeError(f"expected a number from {least}, not {text!r}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m hil.loadmeter",
                description="Serve a fleet of load meters (the link protocol, many per process) on 127.0.0.1 "
                            "TCP ports until SIGTERM or SIGINT.")
    p.add_argument("--count", type=_number(int, 1), required=True, help="meters in the fleet (LM000001...)")
    p.add_argument("--image", type=Path, required=True, help="the .mfw image every meter runs at start")
    p.add_argument("--keys", type=Path, required=True, help="key directory: public keys and utility.secret")
    p.add_argument("--baud", type=_number(int, 1), default=DEFAULT_BAUD, help="line rate of each meter (8N1)")
    p.add_argument("--interval-s", type=_number(int, 1), default=DEFAULT_INTERVAL_S, help="metering interval")
    p.add_argument("--reboot-s", type=_number(float, 0), default=DEFAULT_REBOOT_S, help="how long a reset keeps a meter silent")
    p.add_argument("--board", choices=BOARD_NAMES, default="sim")
    p.add_argument("--seed", type=int, default=1, help="meter n's load comes from seed + n")
    p.add_argument("--behaviour", type=_behaviour, action="append", default=[], metavar="SERIAL=BEHAVIOUR",
                   help=f"a meter that is not good: {', '.join(BEHAVIOURS[1:])} (repeatable)")
    p.add_argument("--ports-file", type=Path, required=True, help="where to write [{serial, url, board, behaviour}]")
    p.add_argument("--json", action="store_true", help="also print the endpoints as JSON on stdout once serving")
    args = p.parse_args(argv)
    try:
        specs = fleet_specs(args.count, args.image, board=args.board, behaviours=dict(args.behaviour), seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    try:
        fleet = LoadFleet(specs, args.keys, baud=args.baud, interval_s=args.interval_s, reboot_s=args.reboot_s)
    except (ValueError, ImageError, KeysError, OSError) as e:
        print(f"loadmeter: {e}", file=sys.stderr)
        return 1

    wrote = []

    def ready(endpoints):
        tmp = args.ports_file.with_name(args.ports_file.name + ".tmp")
        tmp.write_text(json.dumps(endpoints, indent=1) + "\n")
        os.replace(tmp, args.ports_file)  # whole or absent, for whoever waits for it
        wrote.append(args.ports_file)
        if args.json:
            print(json.dumps(endpoints), flush=True)
        print(f"loadmeter: {len(endpoints)} meters at {args.baud} baud, {args.interval_s} s intervals; "
              f"endpoints in {args.ports_file}", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve_fleet(fleet, ready))
    except (ValueError, OSError) as e:
        print(f"loadmeter: {e}", file=sys.stderr)
        return 1
    finally:
        for path in wrote:
            path.unlink(missing_ok=True)  # its ports no longer answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
