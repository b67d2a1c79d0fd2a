"""The field upgrade: snapshot, transfer (resuming where the meter stopped), verify, activate,
wait for the trial to end, snapshot again and compare."""
from __future__ import annotations

import hashlib
import time
from typing import Callable

from . import protocol as P
from .errors import CommandError, MeterfwError
from .image import Image
from .session import Meter

# Meter refusals that mean "this image will not go on this meter"; anything else is a failure.
REFUSALS = {"wrong_board", "bootloader_too_old", "rollback", "rejected", "verify_failed",
            "already_active", "no_space"}
_BOOT_S = 30  # boot, slot check and post-boot health check, with margin for a slow host
_WATCHDOG_S = 9


def continuity(records: list[dict]) -> dict:
    """Missing and duplicated intervals in a run of records, judged by their start times."""
    missed = duplicated = 0
    for prev, rec in zip(records, records[1:]):
        expected = prev["start"] + prev["duration_s"]
        if rec["start"] > expected:
            missed += (rec["start"] - expected) // max(prev["duration_s"], 1)
        elif rec["start"] < expected:
            duplicated += 1
    return {"intervals_missed": missed, "intervals_duplicated": duplicated}


def energy_check(records: list[dict], register_before_mwh: int) -> dict:
    total = sum(r["energy_mwh"] for r in records)
    delta = (records[-1]["register_mwh"] - register_before_mwh) if records else 0
    return {"interval_energy_mwh": total, "register_delta_mwh": delta, "energy_conserved": total == delta}


def upgrade(meter: Meter, data: bytes, img: Image, *, when: str = "boundary",
            progress: Callable[[int, int], None] | None = None) -> dict:
    t0 = time.monotonic()
    m = img.manifest
    before = meter.status()
    report = {"result": None, "reason": None, "from_version": before["active_version"],
              "to_version": m["version"], "payload_bytes": m["payload_size"], "image_bytes": len(data),
              "board": before["board"], "when": when}
    if m["board"] != before["board"]:
        raise CommandError(f"image is for board {m['board']}, but the meter is a {before['board']} board")
    history = meter.read_intervals()
    register_before = history[-1]["register_mwh"] if history else 0
    first_seq = history[-1]["seq"] if history else 0
    report["intervals_before"] = len(history)

    def finish(result: str, reason: str | None = None) -> dict:
        report.update(result=result, reason=reason, seconds=round(time.monotonic() - t0, 2))
        return report

    try:
        t_xfer = time.monotonic()
        sent = _transfer(meter, data, img, report, progress)
        report["transfer_seconds"] = round(time.monotonic() - t_xfer, 2)
        report["transfer_bytes_per_s"] = round(sent / max(time.monotonic() - t_xfer, 1e-6))
        meter.verify()
        act = meter.activate(when)
    except CommandError as e:
        if e.code in REFUSALS:
            return finish("rejected", str(e))
        raise
    wait_s = (before["interval_s"] if when == "boundary" else 0) + _WATCHDOG_S * 3 + _BOOT_S
    after = meter.wait_until(lambda s: s["update"].get("result") in ("confirmed", "reverted"), wait_s)
    if after is None:
        return finish("failed", f"no verdict from the meter within {wait_s} s of activation")
    report["activated_at_s"] = act.get("boundary_s")
    report["boot_reason"] = after["boot_reason"]
    report["active_version"] = after["active_version"]
    report["health"] = after.get("health")
    records = [r for r in meter.read_intervals(max(first_seq, 1)) if r["seq"] > first_seq]
    window = history[-1:] + records
    report["intervals_after"] = len(records)
    report.update(continuity(window))
    report.update(energy_check(records, register_before))
    if after["update"]["result"] == "reverted":
        return finish("reverted", after["update"].get("reason") or "the meter went back to the previous image")
    return finish("confirmed")


def _transfer(meter: Meter, data: bytes, img: Image, report: dict, progress) -> int:
    """Send the image from the first block the meter lacks. Returns the bytes sent now."""
    image_id = hashlib.sha256(img.manifest_bytes).hexdigest()
    st = meter.update_state()
    if st["status"] == P.INITIATED and st.get("image_id") == image_id:
        first, bs = st["first_not_transferred_block"], st["block_size"]  # resume, as DLMS clients do
    else:
        r = meter.initiate(data[:img.payload_offset])
        first, bs = r["first_not_transferred_block"], r["block_size"]
    report["resumed_from_block"] = first
    blocks = (len(data) + bs - 1) // bs
    sent = 0
    for n in range(first, blocks):
        chunk = data[n * bs:(n + 1) * bs]
        r = meter.block(n, chunk)
        if r["next"] != n + 1:
            raise MeterfwError(f"meter expected block {r['next']} after block {n}")
        sent += len(chunk)
        if progress:
            progress(min((n + 1) * bs, len(data)), len(data))
    return sent
