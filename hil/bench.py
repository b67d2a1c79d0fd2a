"""`make bench`: the transfer and upgrade figures of DESIGN.md's performance table, measured in one
run on the simulator (the unix port) and on the emulated Pico (the stock MicroPython firmware in
rp2040js), printed as one table with a column per board and written to build/bench.json (one
object per figure; see the README), then the platform's footprint (hil/footprint.py: the
bootloader's lines and resident heap, now and before it could update itself), written to
build/footprint.json. Ratios are computed from figures measured in the same run; nothing here is
asserted by a test.

On each board two meters run at 115200 baud (the sim with its UART-loss model on; the Pico with
the RP2040's real 32-byte receive FIFO):
  A: the board's real 900 s interval: power-on to first read, payload throughput against the
     line and against the ceiling the line plus the flash allow, frames lost, verify and
     activation to first read.
  B: 1 s intervals, so intervals close while signatures are checked (initiate), blocks arrive
     and the payload is verified: power-on to first interval close, close lateness during each
     phase, the throughput that scheduling around closes leaves, and the peak heap.

Time: on the sim, spans are the host's clock (the sim runs at the host's speed). On the Pico,
every span is Pico time: the meter's own figures (lateness, signature_ms, verify_ms) are, and
host-side spans are differences of the emulated chip's clock (the rig's `clock` command, as
SimBoard.emulated_us), across a reset too (the chip's clock at the end of each power-on is in the
supervisor's log). The emulator computes several times slower than a Pico, so wall-clock spans
would not be.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from hil import footprint
from hil import supervisor as sup
from hil.sim import SimBoard
from meterfw import protocol as P
from meterfw.errors import MeterfwError
from meterfw.image import assemble, build_image, canonical_json, pack_payload, parse_image, sign_manifest
from meterfw.keys import init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "bench"
BAUD = 115200
LINE_BPS = BAUD / 10  # 8N1
PAD_BYTES = 160_000  # with the firmware, a ~200 KB image: ~20 s on the line (both boards)
BUSY_S = 6.0  # board time: initiates (signatures), then verifies, back to back this long
IDLE_S = 6.0  # board time: the idle baseline
LATE_KEPT = 64  # the meter keeps the lateness of its last 64 closes (firmware/metering.py)
SIM_BOARD = json.loads((REPO / "boards" / "sim" / "board.json").read_text())
PICO_BOARD = json.loads((REPO / "boards" / "pico" / "board.json").read_text())
PICO2_HEAP = json.loads((REPO / "boards" / "pico2" / "board.json").read_text())["heap_bytes"]
# gc.mem_free() after gc.collect() at the REPL of the stock v1.28.0 RPI_PICO firmware (its heap is
# 245,888 bytes): what a meter on a real Pico has (../shared/rp2/README.md).
PICO_HEAP_FREE = 241_184
# Anchors (ANCHORS.md): mpremote cp at 115200 1.6-4.9 KB/s; MCUboot serial recovery ~1-4 KB/s.
MPREMOTE_BPS = (1600, 4900)
MCUBOOT_BPS = (1000, 4000)
# Status polls: a new one goes out when the last has had no reply for this long, in board time.
# (In host time it would not do: the emulator answers in several times the Pico's time, more on a
# busy host, and polls faster than the meter answers pile up in its receive buffer.)
POLL_S = 0.1
# Host-time waits for a reply. The emulator computes 4-7x slower than a Pico, more on a busy host;
# an initiate (two Ed25519 checks, seconds on a Pico) gets its own, longer wait.
LINK_TIMEOUT_S = {"sim": 3.0, "pico": 30.0}
INITIATE_TIMEOUT_S = {"sim": 10.0, "pico": 150.0}
NA = "n/a"  # a figure that does not apply to a board
_FLASH = SIM_BOARD["flash"]
FLASH_MS_PER_BYTE = _FLASH["erase_ms"] / _FLASH["block_size"] + _FLASH["page_program_ms"] / _FLASH["page_size"]
CEILING_BPS = 1000.0 / (1000.0 / LINE_BPS + FLASH_MS_PER_BYTE)  # serial: no overlap of line and flash


class CountingLink(Link):
    """A Link that counts the bytes it puts on the line, for the time the frames take there."""

    tx_bytes = 0

    def _write(self, data: bytes) -> None:
        self.tx_bytes += len(data)
        super()._write(data)


class Rig:
    """A board under measurement and the clock its spans are measured in: the host's for the
    sim, the emulated chip's for the Pico."""

    def __init__(self, kind: str, board: SimBoard):
        self.kind, self.board = kind, board

    # -- readings -------------------------------------------------------------------------------
    def _chip(self) -> tuple[int, int, int, float]:
        """(boot, chip us since that power-on, wall us since, host epoch s at the reading)."""
        for _ in range(10):
            t0 = time.time()
            try:
                # A request that meets a reset is never answered: a short wait, then again.
                st = sup.command(self.board.dir, "clock", timeout_s=3)
            except sup.SimError:
                if not self.board.running():
                    raise
                continue
            t1 = time.time()
            if st.get("emulated_us") is not None:
                return st["boots"], st["emulated_us"], st["emulated_wall_us"], (t0 + t1) / 2
            time.sleep(0.1)  # between two power-ons: no chip to ask
        raise MeterfwError(f"{self.board.dir}: the emulated chip did not tell its time")

    def mark(self):
        """Now, for since(): survives resets on the Pico."""
        if self.kind == "sim":
            return time.monotonic()
        boot, us, _, _ = self._chip()
        return boot, us, (self.board.dir / sup.SUPERVISOR_LOG).stat().st_size

    def since(self, mark) -> float:
        """Board seconds from mark to now."""
        if self.kind == "sim":
            return time.monotonic() - mark
        boot0, us0, log_at = mark
        boot, us, _, _ = self._chip()
        if boot == boot0:
            return (us - us0) / 1e6
        # The chip was reset meanwhile: each power-on that ended logged its clock at the end.
        with open(self.board.dir / sup.SUPERVISOR_LOG, "rb") as f:
            f.seek(log_at)
            ends = [int(m) for m in re.findall(rb"device: pico .*?emulated_ms=(\d+)", f.read())]
        if len(ends) != boot - boot0:
            raise MeterfwError(f"{len(ends)} chip clock(s) logged for {boot - boot0} reset(s)")
        return (ends[0] * 1000 - us0 + sum(ends[1:]) * 1000 + us) / 1e6

    def now_s(self) -> float:
        """Board seconds since an arbitrary origin (one power-on, on the Pico)."""
        return time.monotonic() if self.kind == "sim" else self._chip()[1] / 1e6

    def power_on(self) -> tuple[float, float]:
        """(board seconds since the current power-on, the meter's epoch ms at that power-on).

        Pico: the rig's clock, which the meter's RTC reads, is the wall clock at power-on plus
        chip time since. Sim: the device process starts at the power-on, and its clock is the
        host's; the supervisor logs that start against its own start time."""
        if self.kind == "pico":
            _, us, wall_us, host_s = self._chip()
            return us / 1e6, host_s * 1000 - wall_us / 1000
        st = self.board.state()
        log = (self.board.dir / sup.SUPERVISOR_LOG).read_text(errors="replace")
        offset = float(re.findall(r"\+\s*([\d.]+) boot \d+ cause=", log)[-1])
        epoch_ms = (st["started_s"] + offset) * 1000
        return time.time() - epoch_ms / 1000, epoch_ms

    def wait(self, seconds: float) -> None:
        """Let `seconds` of board time pass."""
        t0 = self.now_s()
        while self.now_s() - t0 < seconds:
            time.sleep(0.2)

    def uart_lost(self) -> int:
        return self.board.state().get("uart_lost", 0)


# -- measuring helpers ----------------------------------------------------------------------------

def _poll(meter: Meter, rig: Rig, pred, timeout_s: float, period_s: float = POLL_S) -> dict | None:
    """The first status reply that satisfies pred, polling gently: a new status request goes out
    when none has been answered for `period_s` of board time, and a reply to any request still
    outstanding counts (a booting meter answers late, or not at all until its UART is up).
    Returns within ~20 ms of host time of that reply, so the caller can read the clock then.
    `timeout_s` is host time."""
    link, out = meter.link, []
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        now = rig.now_s()
        if last is None or not 0 <= now - last < period_s:  # (the Pico's clock restarts at a reset)
            out = (out + [link.send(P.STATUS, b"")])[-32:]  # far fewer than 256 sequence numbers
            last = now
        got, _ = link.collect(P.STATUS, out, 0.02)
        for seq in out:
            reply = got.get(seq)
            if isinstance(reply, bytes):
                try:
                    st = json.loads(reply)
                except ValueError:
                    continue
                if pred(st):
                    return st
        if got:
            out = [s for s in out if s not in got]
            last = rig.now_s()
    return None


def _initiate(meter: Meter, kind: str, image: bytes) -> dict:
    head = image[:parse_image(image).payload_offset]
    return meter.privileged(P.UPD_INITIATE, head, timeout_s=INITIATE_TIMEOUT_S[kind])


def _late(before: dict, after: dict) -> tuple[list[int], int]:
    """(lateness of the closes between two statuses as far as the meter kept them, closes)."""
    n = after["metering"]["closes"] - before["metering"]["closes"]
    return (after["metering"]["late_ms"][-n:] if n > 0 else []), max(n, 0)


def _p99(values: list):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def _busy(rig: Rig, call, at_least: int = 1) -> list:
    """call() back to back for BUSY_S of board time, and at least `at_least` times; its results."""
    out, t0 = [], rig.now_s()
    while rig.now_s() - t0 < BUSY_S or len(out) < at_least:
        out.append(call())
    return out


def _upload(meter: Meter, rig: Rig, data: bytes) -> tuple[dict, float, int]:
    """upload(), with the span from the first block out to the last reply in board time (its
    own `blocks_seconds` is the host's clock), and the bytes sent meanwhile: the progress
    callback is called just before the first block goes out and when the last grant says every
    byte is in."""
    marks = {}
    link = meter.link

    def progress(done, total):
        if "start" not in marks:
            marks["tx"] = link.tx_bytes
            marks["start"] = rig.mark()
        elif done >= total and "s" not in marks:
            marks["s"] = rig.since(marks["start"])
            marks["tx"] = link.tx_bytes - marks["tx"]

    up = meter.upload(data, progress)
    if "s" not in marks:
        raise MeterfwError("the transfer ended without the meter saying it had every byte")
    return up, marks["s"], marks["tx"]


def _first_close_s(records: list[dict], st: dict, power_on_ms: float):
    """Board seconds from power-on to the meter's first interval close: the first record's end
    plus its lateness, on the meter's clock. None unless the status still holds that lateness."""
    late = st["metering"]["late_ms"]
    if not records or st["metering"]["closes"] != len(late) or len(late) > len(records):
        return None
    r = records[0]
    return round(((r["start"] + r["duration_s"]) * 1000 + late[0] - power_on_ms) / 1000, 3)


# -- the two meters on one board -------------------------------------------------------------------

def _start(kind: str, name: str, v1: Path, keys_dir: Path, interval_s: int) -> SimBoard:
    d = WORK / kind / name
    d.mkdir(parents=True)
    if kind == "sim":
        (d / "sim.json").write_text(json.dumps({"uart_loss": True}))
        info = sup.start(d, image=v1, keys=keys_dir, interval_s=interval_s, baud=BAUD, seed=3)
    else:
        info = sup.start(d, image=v1, keys=keys_dir, interval_s=interval_s, seed=3, board="pico",
                         firmware=sup.default_firmware())
    return SimBoard(d, info)


def measure(kind: str, keys_dir: Path, say) -> dict:
    """Both meters on one board; the raw measurements."""
    keys = load_keys(keys_dir)
    secret = load_keys(keys_dir, private=False).utility_secret
    out = WORK / kind
    out.mkdir(parents=True)
    v1 = out / "v1.mfw"
    v1.write_bytes(build_image(FIRMWARE, kind, "1.0.0", keys))
    big = _big_image(build_image(FIRMWARE, kind, "1.1.0", keys), keys)
    new_version = parse_image(big).manifest["version"]
    r = {"image_bytes": len(big)}
    t_wall = time.monotonic()

    # -- A: the board's 900 s intervals: power-on, throughput, verify, activation ---------------
    say(f"{kind}: meter A (900 s intervals): boot, transfer of {len(big)} bytes, verify, activation")
    a = _start(kind, "a", v1, keys_dir, 900)
    rig = Rig(kind, a)
    try:
        meter = Meter(CountingLink(a.port, timeout_s=LINK_TIMEOUT_S[kind]), secret)
        if _poll(meter, rig, lambda s: True, 300) is None:
            raise MeterfwError(f"{kind} meter A did not answer within 300 s of power-on")
        r["power_on_to_read_s"] = round(rig.power_on()[0], 3)
        say(f"{kind}: A answered {r['power_on_to_read_s']} s after power-on")
        if _poll(meter, rig, lambda s: s.get("health") is not None, 300) is None:
            raise MeterfwError(f"{kind} meter A ran no health check within 300 s")
        before = meter.read_intervals()
        _initiate(meter, kind, big)  # upload() resumes it: the transfer is timed from its first block
        lost0 = rig.uart_lost()
        up, xfer_s, tx = _upload(meter, rig, big)
        t = up["transfer"]
        r["bps_a"] = len(big) / xfer_s
        r["xfer_a_s"], r["tx_a"], r["windows_a"] = xfer_s, tx, t["windows"]
        r["lost_a"] = rig.uart_lost() - lost0
        r["frames_a"] = t["bad_frames"] + t["no_reply"]
        say(f"{kind}: A took the image at {r['bps_a']:.0f} B/s")
        meter.verify()
        mark = rig.mark()
        meter.activate("now")
        new = _poll(meter, rig, lambda s: s.get("active_version") == new_version
                    and s.get("boot_reason") == "activate", 300)
        if new is None:
            raise MeterfwError(f"{kind} meter A did not answer on the new image within 300 s of activation")
        r["activation_to_read_s"] = round(rig.since(mark), 3)
        say(f"{kind}: A answered on the new image {r['activation_to_read_s']} s after the activate request")
        verdict = _poll(meter, rig, lambda s: s.get("update", {}).get("result") in ("confirmed", "reverted"),
                        600, period_s=0.5)
        if verdict is None or verdict["update"]["result"] != "confirmed":
            raise MeterfwError(f"{kind} meter A: the upgrade was not confirmed: {verdict and verdict['update']}")
        after = [x for x in meter.read_intervals() if not before or x["seq"] > before[-1]["seq"]]
        cont = continuity(before[-1:] + after)
        r["activation_affected"] = cont["intervals_missed"] + cont["intervals_duplicated"]
        meter.link.close()
    finally:
        a.stop()

    # -- B: 1 s intervals: lateness, heap -------------------------------------------------------
    say(f"{kind}: meter B (1 s intervals): idle, signature checks, transfer, verify")
    b = _start(kind, "b", v1, keys_dir, 1)
    rig = Rig(kind, b)
    try:
        meter = Meter(CountingLink(b.port, timeout_s=LINK_TIMEOUT_S[kind]), secret)
        # Not polled while it boots (a poll's answer takes the meter's time): the first close
        # is read back from the meter's own records.
        rig.wait(3.0)
        s_boot = _poll(meter, rig, lambda s: s.get("health") is not None, 300)
        if s_boot is None:
            raise MeterfwError(f"{kind} meter B ran no health check within 300 s")
        _, power_on_ms = rig.power_on()
        r["power_on_to_close_s"] = _first_close_s(meter.read_intervals(), s_boot, power_on_ms)
        r["boot_late_max"] = max(s_boot["metering"]["late_ms"], default=None)
        s_idle = meter.status()
        rig.wait(IDLE_S)  # the baseline: what the metering task does alone
        s0 = meter.status()
        r["late_idle"], r["n_idle"] = _late(s_idle, s0)
        lost0 = rig.uart_lost()
        # At least 3: an initiate takes seconds on a Pico, and each is a few intervals' closes.
        r["sig_ms"] = _busy(rig, lambda: _initiate(meter, kind, big)["signature_ms"], at_least=3)
        s_sig = meter.status()
        say(f"{kind}: B checked signatures {len(r['sig_ms'])} times")
        lost_sig = rig.uart_lost()
        up, xfer_s, _ = _upload(meter, rig, big)  # resumes the last initiate, from block 0
        s1 = meter.status()
        say(f"{kind}: B took the image in {xfer_s:.1f} s")
        lost_xfer = rig.uart_lost()
        r["verify_ms"] = _busy(rig, lambda: meter.verify()["verify_ms"])
        s2 = meter.status()
        r["late_sig"], r["n_sig"] = _late(s0, s_sig)
        r["late_xfer"], r["n_xfer"] = _late(s_sig, s1)
        r["late_verify"], r["n_verify"] = _late(s1, s2)
        r["bps_b"] = len(big) / xfer_s
        r["lost_xfer_b"] = lost_xfer - lost_sig
        r["lost_busy_b"] = (lost_sig - lost0) + (rig.uart_lost() - lost_xfer)
        r["frames_b"] = up["transfer"]["bad_frames"] + up["transfer"]["no_reply"]
        records = [x for x in meter.read_intervals() if x["start"] >= s0["time_s"] - 2]
        cont = continuity(records)
        r["missed_b"] = cont["intervals_missed"] + cont["intervals_duplicated"]
        r["heap"] = s2["heap"]
        r["heap_boot"], r["heap_sig"], r["heap_xfer"] = (s["heap"]["peak_live"] for s in (s_idle, s_sig, s1))
        r["notes"] = [f"{kind}: {n} intervals closed during {phase}; the meter keeps the lateness of the last "
                      f"{LATE_KEPT}, so the max and p99 are of those" for phase, n in
                      (("the signature checks", r["n_sig"]), ("the transfer", r["n_xfer"]),
                       ("the verifies", r["n_verify"])) if n > LATE_KEPT]
        if r["power_on_to_close_s"] is None:
            r["notes"].append(f"{kind}: power-on to first close not measured: the meter no longer held "
                              "the first close's lateness when asked")
        meter.link.close()
    finally:
        b.stop()
    r["wall_s"] = round(time.monotonic() - t_wall)
    return r


def _big_image(base: bytes, keys) -> bytes:
    img = parse_image(base)
    files = dict(img.files, **{"blob.bin": random.Random(7).randbytes(PAD_BYTES)})
    payload = pack_payload(files)
    m = dict(img.manifest, version="1.1.0", payload_size=len(payload),
             payload_sha256=hashlib.sha256(payload).hexdigest())
    raw = canonical_json(m)
    return assemble(raw, sign_manifest(raw, keys), payload)


def pico_unavailable() -> str | None:
    """Why the Pico column cannot be measured here, or None."""
    fw = sup.default_firmware()
    if fw is not None and not fw.is_file():
        return f"Pico firmware {fw} not found: give the RPI_PICO UF2 as PICO_FIRMWARE=path"
    if fw is None:
        return ("no Pico firmware: give the MicroPython v1.28 RPI_PICO UF2 as PICO_FIRMWARE=path "
                f"(with {sup.BOOTROM_NAME} beside it), e.g. PICO_FIRMWARE=~/RPI_PICO-v1.28.0.uf2 make bench")
    if not (fw.parent / sup.BOOTROM_NAME).is_file():
        return f"no RP2040 boot ROM: put {sup.BOOTROM_NAME} beside {fw}"
    if shutil.which("node") is None:
        return "no Node.js: the Pico emulator needs node 18 or newer"
    if not (sup.PICO_RIG / "node_modules" / "rp2040js").is_dir():
        return "the emulator's packages are not installed: run npm ci --prefix hil/pico"
    return None


# -- the table --------------------------------------------------------------------------------------

def figures(runs: dict, notes: dict, delta_runs: dict | None = None) -> list[dict]:
    def col(fn):
        """fn(run, kind) for each board that ran; None where the board did not run."""
        return {k: (fn(r, k) if r is not None else None) for k, r in runs.items()}

    def mean(key):
        return col(lambda r, k: round(sum(r[key]) / len(r[key])) if r[key] else None)

    def heap_peak(r, k):  # the application's: the sim's hardware models are silicon and C on a Pico
        return r["heap"]["peak_live"] - (r["heap"]["board_models"] if k == "sim" else 0)

    heap_of = {"sim": SIM_BOARD["heap_bytes"], "pico": PICO_HEAP_FREE}
    rows = [
        ("Ed25519 check of both signatures (initiate), mean", mean("sig_ms"), "ms", "report"),
        ("  initiates measured", col(lambda r, k: len(r["sig_ms"])), "initiates", "report"),
        ("verify (payload SHA-256), ~200 KB image, mean", mean("verify_ms"), "ms", "report"),
        ("  verifies measured", col(lambda r, k: len(r["verify_ms"])), "verifies", "report"),
        ("interval-close lateness with the meter idle (baseline), max",
         col(lambda r, k: max(r["late_idle"], default=None)), "ms", "report"),
        ("interval-close lateness during signature checks (initiate), max",
         col(lambda r, k: max(r["late_sig"], default=None)), "ms", "<= 50"),
        ("interval-close lateness during signature checks (initiate), p99",
         col(lambda r, k: _p99(r["late_sig"])), "ms", "<= 50"),
        ("  intervals closed during signature checks", col(lambda r, k: r["n_sig"]), "intervals", "report"),
        ("interval-close lateness during transfer, max", col(lambda r, k: max(r["late_xfer"], default=None)),
         "ms", "<= 50"),
        ("interval-close lateness during transfer, p99", col(lambda r, k: _p99(r["late_xfer"])), "ms", "<= 50"),
        ("  intervals closed during transfer", col(lambda r, k: r["n_xfer"]), "intervals", "report"),
        ("interval-close lateness during verify (payload SHA-256), max",
         col(lambda r, k: max(r["late_verify"], default=None)), "ms", "<= 50"),
        ("interval-close lateness during verify (payload SHA-256), p99",
         col(lambda r, k: _p99(r["late_verify"])), "ms", "<= 50"),
        ("  intervals closed during verify", col(lambda r, k: r["n_verify"]), "intervals", "report"),
        ("intervals missed or duplicated (signatures, transfer, verify)", col(lambda r, k: r["missed_b"]),
         "intervals", "0"),
        ("payload throughput at 115200 baud (meter A)", col(lambda r, k: round(r["bps_a"])), "B/s",
         ">= 0.95 x ceiling"),
        ("  share of the raw line rate (11520 B/s)", col(lambda r, k: round(r["bps_a"] / LINE_BPS, 3)), "ratio",
         "report"),
        ("  ceiling: line + flash, no overlap", col(lambda r, k: round(CEILING_BPS)), "B/s", "computed"),
        ("  share of the ceiling", col(lambda r, k: round(r["bps_a"] / CEILING_BPS, 3)), "ratio", ">= 0.95"),
        ("  windows (the board's transfer_window_bytes: sim 4 KiB, Pico 16 KiB)", col(lambda r, k: r["windows_a"]),
         "windows", "report"),
        ("  per window: the frames on the line",
         col(lambda r, k: round(r["tx_a"] / LINE_BPS / r["windows_a"] * 1000, 1)), "ms", "report"),
        ("  per window: the flash (erase + page programs), as the ceiling counts it",
         col(lambda r, k: round(r["image_bytes"] * FLASH_MS_PER_BYTE / r["windows_a"], 1)), "ms", "report"),
        ("  per window: the rest (the meter's work on the last block, the reply, the host's turnaround)",
         col(lambda r, k: round((r["xfer_a_s"] * 1000 - r["tx_a"] / LINE_BPS * 1000
                                 - r["image_bytes"] * FLASH_MS_PER_BYTE) / r["windows_a"], 1)), "ms", "report"),
        ("  vs mpremote cp at 115200 (1.6-4.9 KB/s), best case",
         col(lambda r, k: round(r["bps_a"] / MPREMOTE_BPS[1], 2)), "x", "report"),
        ("  vs MCUboot serial recovery (~1-4 KB/s), best case",
         col(lambda r, k: round(r["bps_a"] / MCUBOOT_BPS[1], 2)), "x", "report"),
        ("throughput with 1 s intervals closing meanwhile (meter B)", col(lambda r, k: round(r["bps_b"])), "B/s",
         "report"),
        ("  share of the ceiling, meter B", col(lambda r, k: round(r["bps_b"] / CEILING_BPS, 3)), "ratio",
         "report"),
        ("frames lost to flash stalls (both transfers)", col(lambda r, k: r["frames_a"] + r["frames_b"]),
         "frames", "0"),
        ("bytes lost by the UART during the transfers (sim: its model; pico: the 32-byte FIFO)",
         col(lambda r, k: r["lost_a"] + r["lost_xfer_b"]), "bytes", "0"),
        ("  during the initiates and verifies of meter B (1 s intervals)", col(lambda r, k: r["lost_busy_b"]),
         "bytes", "report"),
        ("activation to first read on the new image (meter A)", col(lambda r, k: r["activation_to_read_s"]),
         "s", "<= 2"),
        ("intervals affected by the activation", col(lambda r, k: r["activation_affected"]), "intervals", "0"),
        ("power-on to first read (status answered; meter A)", col(lambda r, k: r["power_on_to_read_s"]), "s",
         "report"),
        ("power-on to first interval close (meter B, 1 s intervals)", col(lambda r, k: r["power_on_to_close_s"]),
         "s", "report"),
        ("  lateness of the closes made by the end of boot, max", col(lambda r, k: r["boot_late_max"]), "ms",
         "report"),
        ("heap: peak allocated since boot, garbage included (meter B)", col(lambda r, k: r["heap"]["peak_used"]),
         "bytes", "report"),
        ("heap: peak live since boot (signature checks, transfer and verify included)",
         col(lambda r, k: r["heap"]["peak_live"]), "bytes", "report"),
        ("  reached by the end of boot", col(lambda r, k: r["heap_boot"]), "bytes", "report"),
        ("  reached by the end of the signature checks", col(lambda r, k: r["heap_sig"]), "bytes", "report"),
        ("  reached by the end of the transfer", col(lambda r, k: r["heap_xfer"]), "bytes", "report"),
        ("  of which the sim's own hardware models (C on a Pico)",
         col(lambda r, k: r["heap"]["board_models"] if k == "sim" else NA), "bytes", "report"),
        ("  the application's peak live heap", col(heap_peak), "bytes", "report"),
        ("  the board's heap (sim: as configured; pico: free at the REPL)", col(lambda r, k: heap_of[k]), "bytes",
         "report"),
        ("  share of the board's heap", col(lambda r, k: round(heap_peak(r, k) / heap_of[k], 3)), "ratio",
         "<= 0.60"),
        ("  heap free at peak", col(lambda r, k: round(1 - heap_peak(r, k) / heap_of[k], 3)), "ratio", ">= 0.40"),
        ("  share of a Pico 2's heap (RP2350)",
         col(lambda r, k: round(heap_peak(r, k) / PICO2_HEAP, 3) if k == "sim" else NA), "ratio", "report"),
    ]
    if delta_runs is not None:
        from hil import bench_delta  # it builds on this module

        rows += bench_delta.figures({k: delta_runs.get(k) if runs[k] is not None else None for k in runs}, heap_of)
    out = []
    for name, values, unit, target in rows:
        verdict = {k: _verdict(values[k], target) if runs[k] is not None else notes.get(k, "not run")
                   for k in runs}
        values = {k: (None if v == NA else v) for k, v in values.items()}
        out.append({"name": name, "unit": unit, "target": target, "sim": values["sim"], "pico": values["pico"],
                    "verdict": verdict, "value": values["sim"]})
    return out


def _verdict(v, tgt: str) -> str:
    if v == NA:
        return NA
    if v is None:
        return "none"
    for op, fn in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b)):
        if tgt.startswith(op) and "x" not in tgt:
            return "ok" if fn(v, float(tgt[len(op):])) else "MISSED"
    if tgt == "0":
        return "ok" if v == 0 else "MISSED"
    return ""


def _cell(f: dict, kind: str) -> str:
    if f[kind] is not None:
        return str(f[kind])
    return NA if f["verdict"][kind] == NA else "-"


def _verdicts(f: dict) -> str:
    """ok / MISSED for each board, where the figure has a target."""
    vs = (f["verdict"]["sim"], f["verdict"]["pico"])
    if not any(v in ("ok", "MISSED") for v in vs) and f["target"] in ("report", "computed") or "x" in f["target"]:
        return ""  # no target, or one judged on another row (the share of the ceiling)
    return " / ".join(v if v in ("ok", "MISSED") else "-" for v in vs)


def table(figs: list[dict], markdown: bool = False) -> str:
    if markdown:
        lines = ["| figure | sim | pico | unit | target | verdict (sim / pico) |", "|---|---|---|---|---|---|"]
        lines += [f"| {f['name'].strip()} | {_cell(f, 'sim')} | {_cell(f, 'pico')} | {f['unit']} | {f['target']} "
                  f"| {_verdicts(f)} |" for f in figs]
        return "\n".join(lines)
    w = max(len(f["name"]) for f in figs)
    lines = [f"{'figure':{w}}  {'sim':>8} {'pico':>8} {'unit':9} {'target':18} verdict (sim / pico)"]
    lines += [f"{f['name']:{w}}  {_cell(f, 'sim'):>8} {_cell(f, 'pico'):>8} {f['unit']:9} {f['target']:18} "
              f"{_verdicts(f)}" for f in figs]
    return "\n".join(lines)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds like ^C: every board started is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _on_sigterm)

    def say(msg):
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    from hil import bench_campaign, bench_han  # the campaign engine at fleet scale, HAN enrollment: sections

    sections = {"campaign": bench_campaign.section, "han": bench_han.section}
    if any(a in sections for a in argv) and not any(a in ("sim", "pico") for a in argv):
        return max(run(say, markdown="--markdown" in argv) for name, run in sections.items() if name in argv)
    t0 = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    keys_dir = WORK / "keys"
    init_keys(keys_dir)
    # One ceiling for both: the same flash chip's timing on both boards.
    assert all(PICO_BOARD["flash"][k] == _FLASH[k]
               for k in ("erase_ms", "page_program_ms", "block_size", "page_size"))

    runs: dict = {"sim": None, "pico": None}
    delta_runs: dict = {}
    notes = {}
    asked = [a for a in argv if a in ("sim", "pico")]
    boards = [k for k in ("sim", "pico") if not asked or k in asked]
    for kind in boards:
        why = pico_unavailable() if kind == "pico" else None
        if why:
            notes[kind] = f"skipped: {why}"
            say(f"pico column {notes[kind]}")
            continue
        try:
            runs[kind] = measure(kind, keys_dir, say)
            t_delta = time.monotonic()
            from hil import bench_delta  # it builds on this module

            delta_runs[kind] = bench_delta.measure(kind, keys_dir, say)
            runs[kind]["wall_s"] += round(time.monotonic() - t_delta)
            say(f"{kind}: done in {runs[kind]['wall_s']} s of host time")
        except Exception as e:  # the other board's column still stands; this one says why it has none
            notes[kind] = f"failed: {e}"
            traceback.print_exc()
            say(f"{kind}: {notes[kind]} (the boards' logs are in {WORK / kind})")
    for kind in ("sim", "pico"):
        if kind not in boards:
            notes.setdefault(kind, "not asked for")

    figs = figures(runs, notes, delta_runs)
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "bench.json").write_text(json.dumps(figs, indent=1) + "\n")
    print(table(figs))
    for kind, note in notes.items():
        print(f"{kind}: {note}")
    for r in runs.values():
        for note in (r or {}).get("notes", []):
            print(note)
    fp = footprint.measure()
    (REPO / "build" / "footprint.json").write_text(json.dumps(fp, indent=1) + "\n")
    print("\n" + footprint.table(fp))
    wall = {k: r["wall_s"] for k, r in runs.items() if r}
    print(f"\nhost time: {round(time.monotonic() - t0)} s ({', '.join(f'{k} {s} s' for k, s in wall.items())})")
    print(f"written to {REPO / 'build' / 'bench.json'}")
    if "--markdown" in argv:
        print("\n" + table(figs, markdown=True))
    failed = any(n.startswith("failed") for n in notes.values())
    for name, run in sections.items():
        if name in argv or not asked:
            failed = run(say, markdown="--markdown" in argv) != 0 or failed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
