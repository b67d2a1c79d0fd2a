"""`make bench`: the transfer and upgrade figures of DESIGN.md's performance table, measured on the
simulated Pico at 115200 baud with the UART-loss model on, printed as a table and written to
build/bench.json (one object per figure: name, value, unit, target). Ratios are computed from
figures measured in the same run; nothing here is asserted by a test.

Two meters run:
  A: the board's real 900 s interval: payload throughput against the line and against the
     ceiling the line plus the flash allow, frames lost, verify and activation-to-first-read.
  B: 1 s intervals, so intervals close while signatures are checked (initiate), blocks arrive
     and the payload is verified: close lateness during each, the throughput that scheduling
     around closes leaves, and the peak heap over all of it.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

from hil import supervisor as sup
from hil.sim import SimBoard
from meterfw.image import assemble, build_image, canonical_json, pack_payload, parse_image, sign_manifest
from meterfw.keys import init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity, upgrade

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "bench"
BAUD = 115200
LINE_BPS = BAUD / 10  # 8N1
PAD_BYTES = 160_000  # with the firmware, a ~200 KB image: ~20 s on the line
BUSY_S = 6.0  # initiate (signatures), then verify, back to back this long: intervals close meanwhile
IDLE_S = 6.0
BOARD = json.loads((REPO / "boards" / "sim" / "board.json").read_text())
PICO2_HEAP = json.loads((REPO / "boards" / "pico2" / "board.json").read_text())["heap_bytes"]
# Anchors (ANCHORS.md): mpremote cp at 115200 1.6-4.9 KB/s; MCUboot serial recovery ~1-4 KB/s.
MPREMOTE_BPS = (1600, 4900)
MCUBOOT_BPS = (1000, 4000)


def _big_image(base: bytes, keys) -> bytes:
    img = parse_image(base)
    files = dict(img.files, **{"blob.bin": random.Random(7).randbytes(PAD_BYTES)})
    payload = pack_payload(files)
    m = dict(img.manifest, version="1.1.0", payload_size=len(payload),
             payload_sha256=hashlib.sha256(payload).hexdigest())
    raw = canonical_json(m)
    return assemble(raw, sign_manifest(raw, keys), payload)


def _board(name: str, v1: Path, keys_dir: Path, interval_s: int) -> SimBoard:
    d = WORK / name
    d.mkdir(parents=True)
    (d / "sim.json").write_text(json.dumps({"uart_loss": True}))
    info = sup.start(d, image=v1, keys=keys_dir, interval_s=interval_s, baud=BAUD, seed=3)
    return SimBoard(d, info)


def _uart_lost(board: SimBoard) -> int:
    return board.state().get("uart_lost", 0)


def _late(before: dict, after: dict) -> list[int]:
    n = after["metering"]["closes"] - before["metering"]["closes"]
    return after["metering"]["late_ms"][-n:] if n > 0 else []


def _p99(values: list) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def _wait_up(meter: Meter, seconds: float) -> dict:
    st = meter.wait_until(lambda s: s.get("health") is not None, 30)
    time.sleep(seconds)
    return st


def run() -> list[dict]:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    keys_dir = WORK / "keys"
    init_keys(keys_dir)
    keys = load_keys(keys_dir)
    secret = load_keys(keys_dir, private=False).utility_secret
    v1 = WORK / "v1.mfw"
    v1.write_bytes(build_image(FIRMWARE, "sim", "1.0.0", keys))
    big = _big_image(build_image(FIRMWARE, "sim", "1.1.0", keys), keys)
    img = parse_image(big)
    flash = BOARD["flash"]
    flash_ms_per_byte = flash["erase_ms"] / flash["block_size"] + flash["page_program_ms"] / flash["page_size"]
    ceiling_bps = 1000.0 / (1000.0 / LINE_BPS + flash_ms_per_byte)  # serial: no overlap of line and flash

    print(f"bench: {len(big)} byte image, 115200 baud, UART-loss model on", file=sys.stderr)
    # -- A: throughput, verify, activation ----------------------------------------------------
    a = _board("a", v1, keys_dir, 900)
    try:
        meter = Meter(Link(a.port), secret)
        _wait_up(meter, 1)
        rep = upgrade(meter, big, img, when="now", poll_s=0.02)
        if rep["result"] != "confirmed":
            raise SystemExit(f"bench: upgrade on meter A ended {rep['result']}: {rep['reason']}")
        t = rep["transfer"]
        bps = len(big) / t["blocks_seconds"]
        lost_a = _uart_lost(a)
        frames_a = t["bad_frames"] + t["no_reply"]
        meter.link.close()
    finally:
        a.stop()

    # -- B: 1 s intervals: lateness, heap -------------------------------------------------------
    b = _board("b", v1, keys_dir, 1)
    try:
        meter = Meter(Link(b.port), secret)
        _wait_up(meter, 1)
        s_idle = meter.status()
        time.sleep(IDLE_S)  # the baseline: what the metering task does alone
        s0 = meter.status()
        late_idle = _late(s_idle, s0)
        head = big[:parse_image(big).payload_offset]
        sig_ms = _busy(lambda: meter.initiate(head)["signature_ms"])
        s_sig = meter.status()
        lost_sig = _uart_lost(b)
        tb = meter.upload(big)["transfer"]  # resumes the last initiate, from block 0
        s1 = meter.status()
        lost_xfer_b = _uart_lost(b) - lost_sig
        verify_ms = _busy(lambda: meter.verify()["verify_ms"])
        s2 = meter.status()
        late_sig, late_xfer, late_verify = _late(s0, s_sig), _late(s_sig, s1), _late(s1, s2)
        bps_b = len(big) / tb["blocks_seconds"]
        lost_verify = _uart_lost(b) - lost_sig - lost_xfer_b
        frames_b = tb["bad_frames"] + tb["no_reply"]
        records = [r for r in meter.read_intervals() if r["start"] >= s0["time_s"] - 2]
        cont = continuity(records)
        hp = s2["heap"]
        meter.link.close()
    finally:
        b.stop()

    heap = BOARD["heap_bytes"]
    app_peak = hp["peak_live"] - hp["board_models"]
    figures = [
        ("payload throughput, 115200 baud, UART-loss model on", round(bps), "B/s", ">= 0.95 x ceiling"),
        ("  share of the raw line rate (11520 B/s)", round(bps / LINE_BPS, 3), "ratio", "report"),
        ("  ceiling: line + flash, no overlap", round(ceiling_bps), "B/s", "computed"),
        ("  share of the ceiling", round(bps / ceiling_bps, 3), "ratio", ">= 0.95"),
        ("  vs mpremote cp at 115200 (1.6-4.9 KB/s), best case", round(bps / MPREMOTE_BPS[1], 2), "x", "report"),
        ("  vs MCUboot serial recovery (~1-4 KB/s), best case", round(bps / MCUBOOT_BPS[1], 2), "x", "report"),
        ("throughput with 1 s intervals closing meanwhile", round(bps_b), "B/s", "report"),
        ("  share of the ceiling", round(bps_b / ceiling_bps, 3), "ratio", "report"),
        ("frames lost to flash stalls (both runs)", frames_a + frames_b, "frames", "0"),
        ("bytes dropped by the UART model during transfers (both runs)", lost_a + lost_xfer_b, "bytes", "0"),
        ("  during the initiates and verifies of meter B (1 s intervals)", lost_sig + lost_verify, "bytes",
         "report"),
        ("interval-close lateness with the meter idle (baseline), max", max(late_idle, default=None), "ms",
         "report"),
        ("interval-close lateness during transfer, max", max(late_xfer, default=None), "ms", "<= 50"),
        ("interval-close lateness during transfer, p99", _p99(late_xfer), "ms", "<= 50"),
        ("  intervals closed during transfer", len(late_xfer), "intervals", "report"),
        ("interval-close lateness during signature checks (initiate), max", max(late_sig, default=None), "ms",
         "<= 50"),
        ("interval-close lateness during signature checks (initiate), p99", _p99(late_sig), "ms", "<= 50"),
        ("  intervals closed during signature checks", len(late_sig), "intervals", "report"),
        ("interval-close lateness during verify (payload SHA-256), max", max(late_verify, default=None), "ms",
         "<= 50"),
        ("interval-close lateness during verify (payload SHA-256), p99", _p99(late_verify), "ms", "<= 50"),
        ("  intervals closed during verify", len(late_verify), "intervals", "report"),
        ("intervals missed or duplicated (signatures, transfer, verify)", cont["intervals_missed"] + cont["intervals_duplicated"],
         "intervals", "0"),
        ("activation to first read on the new image", rep.get("activation_to_first_read_s"), "s", "<= 2"),
        ("intervals affected by the activation", rep["intervals_missed"] + rep["intervals_duplicated"], "intervals",
         "0"),
        ("heap: peak allocated since boot, garbage included", hp["peak_used"], "bytes", "report"),
        ("heap: peak live since boot (signature checks, transfer and verify included)", hp["peak_live"], "bytes",
         "report"),
        ("  reached by the end of boot", s_idle["heap"]["peak_live"], "bytes", "report"),
        ("  reached by the end of the signature checks", s_sig["heap"]["peak_live"], "bytes", "report"),
        ("  reached by the end of the transfer", s1["heap"]["peak_live"], "bytes", "report"),
        ("  of which the sim's own hardware models (C on a Pico)", hp["board_models"], "bytes", "report"),
        ("  the application's peak live heap", app_peak, "bytes", "report"),
        ("  share of the Pico's heap (64-bit sim objects)", round(app_peak / heap, 3), "ratio", "<= 0.60"),
        ("  heap free at peak", round(1 - app_peak / heap, 3), "ratio", ">= 0.40"),
        ("  share of a Pico 2's heap (RP2350)", round(app_peak / PICO2_HEAP, 3), "ratio", "report"),
        ("Ed25519 check of both signatures on the sim, mean of %d initiates" % len(sig_ms),
         round(sum(sig_ms) / len(sig_ms)), "ms", "report"),
        ("verify (payload SHA-256), ~200 KB image, mean of %d" % len(verify_ms),
         round(sum(verify_ms) / len(verify_ms)), "ms", "report"),
    ]
    return [{"name": n, "value": v, "unit": u, "target": tgt} for n, v, u, tgt in figures]


def _busy(call) -> list:
    """call() back to back for BUSY_S; its results."""
    out, t_end = [], time.monotonic() + BUSY_S
    while time.monotonic() < t_end:
        out.append(call())
    return out


def _verdict(f: dict) -> str:
    v, tgt = f["value"], f["target"]
    if v is None:
        return "n/a"
    for op, fn in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b)):
        if tgt.startswith(op) and "x" not in tgt:
            return "ok" if fn(v, float(tgt[len(op):])) else "MISSED"
    if tgt == "0":
        return "ok" if v == 0 else "MISSED"
    return ""


def main() -> int:
    figures = run()
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "bench.json").write_text(json.dumps(figures, indent=1) + "\n")
    w = max(len(f["name"]) for f in figures)
    print(f"{'figure':{w}}  {'value':>10} {'unit':9} {'target':18} verdict")
    for f in figures:
        v = "-" if f["value"] is None else f["value"]
        print(f"{f['name']:{w}}  {v!s:>10} {f['unit']:9} {f['target']:18} {_verdict(f)}")
    print(f"\nwritten to {REPO / 'build' / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
