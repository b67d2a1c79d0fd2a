"""Talking to one meter: typed calls over a Link."""
from __future__ import annotations

import json
import struct
import time
from typing import Callable

from . import protocol as P
from .auth import AuthSession, meter_key
from . import framing, reply
from .errors import CommandError, MeterfwError, ReplyError, SerialMismatch, TransportError
from .delta import Delta
from .image import Image, as_image
from .transport import BUSY, BUSY_WAIT_S, Backoff, Link

# The meter rebooted, or another client took the session (its challenge made ours stale, and our
# tags fail): authenticate again, once.
_REAUTH = {"auth_required", "replay", "auth_failed"}
_BUSY = {BUSY}  # the meter could not take a request just now; nothing changed
_BATCH_TRIES = 6  # a window that gets no reply at all this often in a row: the link is gone
_NO_CREDIT_WAIT_S = 0.1


def block_reply(payload: bytes) -> dict:
    """A block reply: next u32, window u16, done u8 (binary: it is on every window's critical path)."""
    if len(payload) != 7:
        raise TransportError(f"meter sent a block reply of {len(payload)} bytes, not 7")
    nxt, window, done = struct.unpack("<IHB", payload)
    return {"next": nxt, "window": window, "done": bool(done)}


def _records(what: str, page: dict, spec: dict) -> list[dict]:
    """A page's rows as records (one object per row, named by the page's fields), each checked."""
    recs = [dict(zip(page["fields"], row)) for row in page["rows"]]
    for r in recs:
        reply.check(what, r, spec)
    return recs


def _next_page(since_seq: int, recs: list[dict]) -> int:
    """Where the next page starts; a meter whose pages do not move on would be read forever."""
    nxt = recs[-1]["seq"] + 1
    if nxt <= since_seq:
        raise ReplyError(f"meter sent a page that ends at seq {nxt - 1}, before the {since_seq} asked for")
    return nxt


class Meter:
    def __init__(self, link: Link, utility_secret: bytes | None = None, expect_serial: str | None = None):
        """With expect_serial (--serial), the meter's serial is read before anything else is
        done on it, and SerialMismatch raised, nothing changed, when it is another meter."""
        self.link = link
        self._secret = utility_secret
        self._auth: AuthSession | None = None
        self.expect_serial = expect_serial
        if expect_serial is not None:
            self.serial()

    def serial(self) -> str:
        """The meter's serial, from its status: the one pinned, if one is (checked again at each
        authentication, since the session key derives from it, and a port can change meters)."""
        serial = self.status().get("serial")
        if self.expect_serial is not None and serial != self.expect_serial:
            raise SerialMismatch(f"the meter on {self.link.url} is {serial or 'without a serial number'}, "
                                 f"not {self.expect_serial}; nothing was done")
        if not serial:
            raise ReplyError("the meter reports no serial number, so no key to authenticate it with")
        return serial

    def _authenticate(self) -> AuthSession:
        if self._secret is None:
            raise CommandError("this is a privileged command: give --keys KEYDIR with the utility secret")
        serial = self.serial()
        nonce = bytes.fromhex(self.link.request_json(P.AUTH_CHALLENGE)["nonce"])
        self._auth = AuthSession(meter_key(self._secret, serial), nonce)
        return self._auth

    def privileged(self, cmd: int, body: bytes = b"", **kw) -> dict:
        """A privileged request inside an authenticated session, opened (again, once) when
        needed; its reply is sealed by the meter and checked here. A meter without room for the
        request just now (it is busiest at boot) refused it having changed nothing: it is sealed
        afresh and sent again, a little later each time."""
        reauthenticated, backoff = False, Backoff()
        while True:
            auth = self._auth or self._authenticate()
            request = auth.seal(cmd, body)
            try:
                return self.link.request_json(cmd, raw=request, opener=auth.opener(cmd, request), **kw)
            except CommandError as e:
                if backoff.again(e):
                    continue
                if e.code not in _REAUTH or reauthenticated:
                    raise
                reauthenticated = True
                self._auth = None

    def attested(self, cmd: int, args: dict | None = None) -> dict:
        """An open command's reply, sealed by the meter (ATTEST): a read a link cannot forge."""
        return self.privileged(P.ATTEST, bytes([cmd]) + (json.dumps(args).encode() if args else b""))

    def seal(self, cmd: int, body: bytes) -> bytes:
        """body sealed for the current session (opened first if needed), for pipelined sends."""
        return (self._auth or self._authenticate()).seal(cmd, body)

    def drop_session(self) -> None:
        """The meter no longer knows our session (it rebooted): the next call opens a new one."""
        self._auth = None

    def status(self, **kw) -> dict:
        return self.link.request_json(P.STATUS, **kw)

    def read_intervals(self, since_seq: int = 0, since_s: int = 0) -> list[dict]:
        """Every interval record from since_seq (and from start time since_s) on, page by page."""
        out: list[dict] = []
        while True:
            page = self.link.request_json(P.READ_INTERVALS, {"since_seq": since_seq, "since_s": since_s})
            recs = _records("interval record", page, reply.INTERVAL)
            for r in recs:
                r["flags"] = [n for i, n in enumerate(page["flag_names"]) if r["flags"] >> i & 1]
                r["energy_wh"] = r["energy_mwh"] / 1000
            out += recs
            if not page["more"] or not recs:
                return out
            since_seq = _next_page(since_seq, recs)

    def read_events(self, since_seq: int = 0) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self.link.request_json(P.READ_EVENTS, {"since_seq": since_seq, "limit": 50})
            recs = _records("event record", page, reply.EVENT)
            for e in recs:
                e["name"] = page["names"].get(str(e["code"]), "event")
            out += recs
            if not page["more"] or not recs:
                return out
            since_seq = _next_page(since_seq, recs)

    # -- the meter runtime: registers, state, health, time, relay, alarms, display -----------------
    def read_registers(self) -> dict:
        """The billing read; it carries the alarms that wait for the next read (FR16)."""
        return self.link.request_json(P.READ_REGISTERS)

    def read_state(self) -> dict:
        return self.link.request_json(P.READ_STATE)

    def set_state(self, changes: dict) -> dict:
        return self.privileged(P.SET_STATE, json.dumps(changes).encode())

    def health(self, with_time: bool = True) -> dict:
        """Run the meter's health check; with_time sends our clock so it measures its offset."""
        body = {"host_time_ms": time.time_ns() // 1_000_000} if with_time else {}
        return self.link.request_json(P.HEALTH, body, timeout_s=max(self.link.timeout_s, 10))

    def time_get(self) -> dict:
        """The meter's time, with the offset from ours (the midpoint of the exchange)."""
        t0 = time.time_ns() // 1_000_000
        r = self.link.request_json(P.TIME_GET)
        t1 = time.time_ns() // 1_000_000
        r["host_time_ms"] = (t0 + t1) // 2
        r["offset_ms"] = r["time_ms"] - r["host_time_ms"]
        r["round_trip_ms"] = t1 - t0
        return r

    def time_set(self, time_ms: int) -> dict:
        return self.privileged(P.TIME_SET, json.dumps({"time_ms": int(time_ms)}).encode())

    def relay(self, action: str) -> dict:
        return self.privileged(P.RELAY, json.dumps({"action": action}).encode())

    def read_alarms(self) -> list[dict]:
        """Every alarm the meter holds until it is acknowledged."""
        return self.link.request_json(P.READ_ALARMS)["alarms"]

    def ack_alarms(self, seqs) -> dict:
        return self.privileged(P.ACK_ALARMS, json.dumps({"seqs": sorted(set(seqs))}).encode())

    def pushed_alarms(self) -> list[dict]:
        """Alarms the meter pushed (unsolicited ALARM frames) since the last call, one per seq."""
        seen: dict[int, dict] = {}
        for f in self.link.alarms:
            try:
                a = reply.parse("pushed alarm", f.payload, reply.ALARM)
            except ReplyError:
                continue  # not ours to judge: the frame's CRC was good, its body is not an alarm
            seen[a["seq"]] = a
        self.link.alarms.clear()
        return [seen[k] for k in sorted(seen)]

    def listen(self, seconds: float, poll_s: float = 0.25) -> list[dict]:
        """Keep the line open for `seconds`, collecting pushed alarms (pings pump the reader)."""
        got: dict[int, dict] = {}
        deadline = time.monotonic() + seconds
        while True:
            self.link.request(P.PING, b"")
            for a in self.pushed_alarms():
                got[a["seq"]] = a
            if time.monotonic() >= deadline:
                return [got[k] for k in sorted(got)]
            time.sleep(poll_s)

    def display(self) -> dict:
        return self.link.request_json(P.READ_DISPLAY)

    # -- the home area network ---------------------------------------------------------------
    def han_join(self, eui64: str, install_code: str, window_s: int = 180, tech: str = "zigbee-se",
                 kind: str | None = None) -> dict:
        """Enroll a device: the meter checks the install code's CRC, keeps the key it derives and
        opens the join window; the device joins by itself. The outcome is in han_table()."""
        body = {"eui64": eui64, "install_code": install_code, "window_s": int(window_s), "tech": tech}
        if kind:
            body["kind"] = kind
        return self.privileged(P.HAN_JOIN, json.dumps(body).encode())

    def han_table(self) -> dict:
        """The meter's HAN: radio fitted, drivers, jobs waiting, and each device with its outcome."""
        return self.link.request_json(P.HAN_TABLE)

    def han_remove(self, eui64: str) -> dict:
        """Unenroll a device: the meter erases its key and tells it to leave."""
        return self.privileged(P.HAN_REMOVE, json.dumps({"eui64": eui64}).encode())

    def han_outcome(self, eui64: str, timeout_s: float, poll_s: float = 0.5,
                    waiting: Callable[[float], None] | None = None) -> dict | None:
        """The device's row once its enrollment has an outcome; None if it has none in time.
        `waiting(seconds_left)` is called at each poll that finds none yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [d for d in self.han_table()["devices"] if d["eui64"] == eui64]
            if rows and rows[0]["state"] != "joining":
                return rows[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if waiting:
                waiting(left)
            time.sleep(min(poll_s, left))

    def reset_registers(self) -> dict:
        return self.privileged(P.RESET_REGISTERS)

    def update_state(self) -> dict:
        return self.link.request_json(P.UPD_STATE)

    def initiate(self, head: bytes, base: bytes | None = None) -> dict:
        """Start a transfer of the image with this head; with `base`, of a delta against the
        image of that id, which the meter must be running."""
        return self.privileged(P.UPD_DELTA, base + head) if base else self.privileged(P.UPD_INITIATE, head)

    def upload(self, image: Image | Delta | bytes, progress: Callable[[int, int], None] | None = None) -> dict:
        """Upload an image into the meter's inactive slot, a granted window at a time, from the
        first block the meter lacks (no initiate when it already holds part of this image).
        Given a Delta, each block goes as its recipe against the image the meter runs, and the
        meter makes the block from it: the slot ends up the same.

        The meter grants `window` blocks from `next`; they go out back to back, and the reply to
        the last one carries the next grant (it comes once the meter has written the window to
        flash). After anything but a clean window (a damaged or lost frame, a reply that did not
        come, a meter that restarted) we ask the meter where it stands and for a fresh grant, so
        we never send into its flash work. progress(bytes the meter has, image bytes) is called
        as grants come. Returns `resumed_from_block`, `blocks`, `bytes_sent` (block bodies sent now, once each),
        `signature_ms` (the meter's Ed25519 check at the initiate; None on a resume) and
        `transfer`: the counts of block frames, bad frames, windows, replies missing,
        resyncs, blocks sent again, and the seconds from the first block to the last reply.
        Raises TransportError when the meter stops answering, CommandError when it refuses.
        """
        progress = progress or (lambda done, total: None)
        delta = image if isinstance(image, Delta) else None
        img = delta or as_image(image)  # the caller's object; bytes only from callers that hold nothing more
        size, image_id = img.size, img.image_id.hex()
        base = delta.base_id if delta else None
        st = self.update_state()
        signature_ms = None
        if st.get("status") == P.INITIATED and st.get("image_id") == image_id and st.get("base") == (base and base.hex()):
            # Resume, as DLMS clients do: no initiate, from the first block not yet transferred.
            bs, first = st["block_size"], st["first_not_transferred_block"]
            nxt, window = first, st.get("next_block", first) + st.get("window", 1) - first
        else:
            r = self.initiate(img.head, base)
            signature_ms = r.get("signature_ms")
            bs, first = r["block_size"], r["first_not_transferred_block"]
            nxt, window = r.get("next", first), r.get("window", 1)
        if delta and bs != delta.block_size:
            raise MeterfwError(f"the delta is cut for {delta.block_size}-byte blocks and this meter's are {bs}: "
                               "build it again, or upgrade with the full image")
        body = delta.body if delta else (lambda n: img.data[n * bs:(n + 1) * bs])
        blocks = (size + bs - 1) // bs
        stats = {"block_frames": 0, "bad_frames": 0, "windows": 0, "no_reply": 0, "resyncs": 0}
        timeout_s = max(self.link.timeout_s, 5.0)
        fails = 0
        reauthed = False  # the last window's errors made us authenticate again
        progress(min(nxt * bs, size), size)
        t0 = time.monotonic()
        while nxt < blocks:
            if window <= 0:  # the meter is about to write flash of its own, or restarting: ask again
                time.sleep(_NO_CREDIT_WAIT_S)
                try:
                    nxt, window = self._where(image_id)
                except TransportError:
                    fails += 1
                    if fails >= _BATCH_TRIES:
                        raise
                continue
            sent = []
            for n in range(nxt, min(nxt + window, blocks)):
                sent.append(self.link.send(P.UPD_BLOCK, self.seal(P.UPD_BLOCK, struct.pack("<I", n) + body(n))))
            stats["block_frames"] += len(sent)
            stats["windows"] += 1
            got, bad = self.link.collect(P.UPD_BLOCK, sent, timeout_s)
            stats["bad_frames"] += bad
            stats["no_reply"] += len(sent) - len(got)
            errors = [r for r in got.values() if isinstance(r, CommandError)]
            if any(e.code not in _REAUTH | _BUSY for e in errors):
                raise next(e for e in errors if e.code not in _REAUTH | _BUSY)
            reauth = [e for e in errors if e.code in _REAUTH]
            if reauth:
                if reauthed:  # authenticated again just now, and still refused: not a stale session
                    raise reauth[0]
                self.drop_session()  # the meter restarted, or a challenge made ours stale: a new one
            reauthed = bool(reauth)
            if any(e.code in _BUSY for e in errors):
                time.sleep(BUSY_WAIT_S)  # it had no room for a block just now: ask again shortly
            last = got.get(sent[-1])
            if last is not None and not errors and not bad:
                r = block_reply(last)
                fails = 0
                nxt, window = r["next"], r["window"]
                progress(min(nxt * bs, size), size)
                if r["done"]:
                    break
                continue
            fails = fails + 1 if not got else 0
            if fails >= _BATCH_TRIES:
                raise TransportError(f"the meter stopped answering during the transfer (at block {nxt} of {blocks})")
            stats["resyncs"] += 1
            try:
                nxt, window = self._where(image_id)
            except TransportError:
                window = 0  # the meter is restarting; ask again
        stats["blocks_resent"] = max(stats["block_frames"] - (blocks - first), 0)
        stats["blocks_seconds"] = round(time.monotonic() - t0, 3)  # first block out to the last reply
        return {"resumed_from_block": first, "blocks": blocks,
                "bytes_sent": sum(len(body(n)) for n in range(first, blocks)),
                "signature_ms": signature_ms, "transfer": stats}

    def _where(self, image_id: str) -> tuple[int, int]:
        """(next block, window) from the meter's update state, with a grant made just now."""
        st = self.update_state()
        if st.get("status") != P.INITIATED or st.get("image_id") != image_id:
            raise MeterfwError("the meter dropped the transfer (it was initiated again elsewhere)")
        return st["next_block"], st["window"]

    def verify(self) -> dict:
        return self.privileged(P.UPD_VERIFY, timeout_s=60)

    def notice(self, info: dict) -> dict:
        """FR33: tell the meter an upgrade is available, before any of the payload."""
        return self.privileged(P.UPD_NOTICE, json.dumps(info).encode())

    def activate(self, when: str = "boundary", at_s: int | None = None, registers: str = "preserve",
                 ack: str = "immediate") -> dict:
        body = {"when": when, "registers": registers, "ack": ack}
        if at_s is not None:
            body["at_s"] = int(at_s)
        return self.privileged(P.UPD_ACTIVATE, json.dumps(body).encode())

    def revert(self) -> dict:
        return self.privileged(P.REVERT)

    def _poll_timeout_s(self) -> float:
        """A third of the link's timeout, quick to retry through a reset; never less than twice
        the time the largest reply (a status is near it) takes on the line at its baud rate."""
        return max(self.link.timeout_s / 3, 2 * framing.MAX_PAYLOAD * 10 / self.link.baud)

    def wait_until(self, predicate, timeout_s: float, poll_s: float = 0.5) -> dict | None:
        """Poll status through resets until predicate(status) holds; None on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                st = self.status(timeout_s=self._poll_timeout_s(), retries=0)
                if predicate(st):
                    return st
            except TransportError:
                if self.link.is_shut:
                    raise
                try:
                    self.link.reopen()
                except TransportError:
                    pass
            time.sleep(poll_s)
        return None
