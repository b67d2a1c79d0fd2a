"""The field upgrade, as the use case's steps run it: the upgrade-available notice (FR33), a
snapshot of the meter (FR4: intervals, event log, registers, relay and meter state, health and
clock), the flow-controlled transfer (resuming where the meter stopped), verify, activate (now,
at the interval boundary or at a time; FR5, FR30, FR3, FR16), the wait for the meter's verdict,
a second snapshot and the comparison of the two with every discrepancy listed (step 15)."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Callable

from . import protocol as P
from . import reply
from .delta import Delta, full_wire_bytes
from .errors import CommandError
from .image import Image
from .session import Meter
from .transport import DEFAULT_TIMEOUT_S

# Meter refusals that mean "this image will not go on this meter (now)": the result is
# `rejected` and the meter keeps what it had. Anything else is a failure.
REFUSALS = {"wrong_board", "bootloader_too_old", "platform_too_old", "rollback", "downgrade", "rejected",
            "verify_failed", "already_active", "no_space", "pricing_event", "on_trial", "wrong_base"}
_BOOT_S = 30  # boot, slot check and post-boot health check, with margin for a slow host
_WATCHDOG_S = 9
_CLOCK_TOLERANCE_S = 2
# Status fields that describe the meter's own state and must come through an upgrade unchanged.
_PRESERVED = ("serial", "board", "state_hash", "interval_s")


class Stage:
    """What the flow is doing, for a progress display: stage(name) and progress(done, total)."""

    def __init__(self, stage: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None):
        self.stage = stage or (lambda name: None)
        self.progress = progress or (lambda done, total: None)


def parse_when(words: list[str] | str | None) -> tuple[str, int | None]:
    """`now`, `boundary`, or `at TIME` (epoch seconds or ISO-8601, UTC unless it says otherwise)."""
    if not words:
        return "boundary", None
    if isinstance(words, str):
        words = words.split()
    if words in (["now"], ["boundary"]):
        return words[0], None
    if len(words) == 2 and words[0] == "at":
        return "at", parse_time(words[1], "--when at")
    raise CommandError(f"--when takes now, boundary or at TIME, not {' '.join(words)!r}")


def parse_time(text: str, what: str = "a time") -> int:
    """Epoch seconds, or ISO-8601 (UTC unless it says otherwise)."""
    if re.fullmatch(r"-?[0-9]+", text):  # ASCII digits: str.isdigit() also takes "²", which int() refuses
        return int(text)
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        return int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp())
    except (ValueError, OverflowError):  # not a time, or one past year 9999 in UTC
        raise CommandError(f"{what} takes epoch seconds or an ISO-8601 time, not {text!r}") from None


DELTA_MODES = ("auto", "never", "only")


def choose(img: Image | Delta, deltas, mode: str, running_id: str | None) -> tuple:
    """(what to send: the full image or a delta, None) or (None, why neither will do). A delta
    is for the image the meter runs (running_id); `auto` takes it when it costs fewer bytes on
    the wire than the full image, `only` takes nothing else, `never` sends the full image."""
    full = img if isinstance(img, Image) else None
    candidates = [img] if full is None else [d for d in deltas if d.image_id == full.image_id]
    fit = [d for d in candidates if running_id is not None and d.base_id.hex() == running_id]
    if mode != "never" and fit:
        best = min(fit, key=Delta.wire_bytes)
        if full is None or mode == "only" or best.wire_bytes() < full_wire_bytes(full, best.block_size):
            return best, None
    if full is not None and mode != "only":
        return full, None
    if mode == "never":
        return None, "a delta was given and --delta never asks for the full image"
    have = ", ".join(sorted({d.base_id.hex()[:16] for d in candidates})) or "none"
    return None, f"no delta for the image the meter runs ({(running_id or 'unknown')[:16]}); deltas for: {have}"


def precheck(img: Image | Delta, meter_board: str | None = None) -> str | None:
    """Host-side checks before the meter is asked anything (the image was parsed where it was
    read): None, or why it will not go on this meter."""
    if meter_board is not None and img.manifest["board"] != meter_board:
        return f"image is for board {img.manifest['board']}, this meter is a {meter_board} board"
    return None


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


# --- snapshots (FR4) ----------------------------------------------------------------------------

def _optional(fn, *args, default=None):
    """A read the meter may not offer (an older image, the recovery console)."""
    try:
        return fn(*args)
    except CommandError as e:
        if e.code in ("unknown_command", "auth_required"):
            return default
        raise


def snapshot(meter: Meter) -> dict:
    """Everything FR4 asks for, read from the meter now: status, every interval, the event log,
    the registers, the meter state with the relay, and a health check with the host's time."""
    st = meter.status()
    snap = {"taken_s": round(time.time(), 3), "status": st,
            "intervals": _optional(meter.read_intervals, default=[]),
            "events": _optional(meter.read_events, default=[])}
    for key, name, args in (("registers", "read_registers", ()), ("state", "read_state", ()),
                            ("health", "health", (True,)), ("time", "time_get", ())):
        fn = getattr(meter, name, None)
        snap[key] = _optional(fn, *args) if fn else None
    t = snap["time"]
    if t is not None:
        snap["clock_offset_s"] = round(t["offset_ms"] / 1000, 3)
    elif st.get("time_s") is not None:
        snap["clock_offset_s"] = round(st["time_s"] - snap["taken_s"], 1)  # whole seconds only
    else:
        snap["clock_offset_s"] = None
    return snap


def _relay(snap: dict):
    relay = (snap.get("state") or {}).get("relay")
    return None if relay is None else {k: relay.get(k) for k in ("latched", "commanded")}


def _failed_health(snap: dict) -> list:
    items = (snap.get("health") or {}).get("items") or snap["status"].get("health") or []
    return [h for h in items if not h.get("ok") and h.get("severity") != "info"]


def summary(snap: dict) -> dict:
    st, regs = snap["status"], snap.get("registers") or {}
    ivs = snap["intervals"]
    return {
        "version": st.get("active_version"), "slot": st.get("active_slot"), "confirmed": st.get("confirmed"),
        "register_mwh": st.get("register_mwh"), "received_mwh": regs.get("received_mwh"),
        "intervals": len(ivs), "last_interval_seq": ivs[-1]["seq"] if ivs else None,
        "events": len(snap["events"]), "clock_offset_s": snap["clock_offset_s"],
        "security_floor": st.get("security_floor"), "state_hash": st.get("state_hash"),
        "relay": _relay(snap), "health_failed": _failed_health(snap),
    }


def compare(before: dict, after: dict, *, expect_version: str, registers: str = "preserve") -> list[str]:
    """Every difference between two snapshots that an upgrade must not cause (step 15)."""
    out = []
    sb, sa = before["status"], after["status"]
    if sa.get("active_version") != expect_version:
        out.append(f"meter runs {sa.get('active_version')}, expected {expect_version}")
    # Intervals: each one read before is still there, bit for bit; none missing or twice after.
    after_by_seq = {r["seq"]: r for r in after["intervals"]}
    for r in before["intervals"]:
        a = after_by_seq.get(r["seq"])
        if a is None:
            if after["intervals"] and r["seq"] >= after["intervals"][0]["seq"]:
                out.append(f"interval {r['seq']} (start {r['start']}) is missing after the upgrade")
        elif a != r:
            out.append(f"interval {r['seq']} changed: before {r}, after {a}")
    tail = [r for r in after["intervals"] if not before["intervals"] or r["seq"] >= before["intervals"][-1]["seq"]]
    cont = continuity(tail)
    if cont["intervals_missed"]:
        out.append(f"{cont['intervals_missed']} interval(s) missing since the upgrade started")
    if cont["intervals_duplicated"]:
        out.append(f"{cont['intervals_duplicated']} interval(s) duplicated since the upgrade started")
    for prev, rec in zip(tail, tail[1:]):
        if rec["register_mwh"] - prev["register_mwh"] != rec["energy_mwh"] and registers != "reset":
            out.append(f"interval {rec['seq']}: register moved {rec['register_mwh'] - prev['register_mwh']} mWh, "
                       f"interval energy {rec['energy_mwh']} mWh")
    # Event log: every record read before is still there (unless the bounded log rotated it out).
    ev_after = {e["seq"]: e for e in after["events"]}
    oldest = min(ev_after) if ev_after else None
    for e in before["events"]:
        a = ev_after.get(e["seq"])
        if a is None and oldest is not None and e["seq"] >= oldest:
            out.append(f"event {e['seq']} ({e['name']}) is missing after the upgrade")
        elif a is not None and a != e:
            out.append(f"event {e['seq']} changed: before {e}, after {a}")
    # Registers never go backwards unless a reset was asked for.
    rb, ra = sb.get("register_mwh"), sa.get("register_mwh")
    if rb is not None and ra is not None and ra < rb and registers != "reset":
        out.append(f"register went backwards: {rb} mWh before, {ra} mWh after")
    # Meter state, relay, identity: bit for bit.
    for k in _PRESERVED:
        if k in sb and k in sa and sb[k] != sa[k]:
            out.append(f"{k} changed: before {sb[k]!r}, after {sa[k]!r}")
    if _relay(before) is not None and _relay(after) is not None and _relay(before) != _relay(after):
        out.append(f"relay changed: before {_relay(before)}, after {_relay(after)}")
    rb_, ra_ = before.get("registers") or {}, after.get("registers") or {}
    for k in ("delivered_mwh", "received_mwh"):
        if k in rb_ and k in ra_ and ra_[k] < rb_[k] and registers != "reset":
            out.append(f"{k} register went backwards: {rb_[k]} before, {ra_[k]} after")
    # The clock is where it was (the reboot must not lose or gain time).
    cb, ca = before.get("clock_offset_s"), after.get("clock_offset_s")
    if cb is not None and ca is not None and abs(ca - cb) > _CLOCK_TOLERANCE_S:
        out.append(f"meter clock moved by {ca - cb:+.1f} s against the host's")
    floor_b, floor_a = sb.get("security_floor"), sa.get("security_floor")
    if floor_b is not None and floor_a is not None and floor_a < floor_b:
        out.append(f"security floor went down: {floor_b} -> {floor_a}")
    for h in _failed_health(after):
        out.append(f"health check {h.get('check')} ({h.get('severity')}) failed: {h.get('message')}")
    return out


# --- the flow ----------------------------------------------------------------------------------

def upgrade(meter: Meter, img: Image | Delta, *, when: str = "boundary", at_s: int | None = None,
            registers: str = "preserve", ack: str = "immediate",
            progress: Callable[[int, int], None] | None = None, stage: Callable[[str], None] | None = None,
            poll_s: float = 0.2, deltas=(), delta: str = "auto", plan=None, keep=None,
            before: dict | None = None) -> dict:
    """Upgrade the meter to `img`, a full image or a delta; with a full image, one of `deltas`
    for the image the meter runs goes instead when `delta` (auto, never, only) says so.

    For a caller that must survive its own crash (a campaign): `keep(key, value)` is told the
    before-snapshot and the activation as they happen; `before` gives back a kept snapshot, and a
    meter that already switched to `img` (or already reverted from it) is then taken from its
    verdict on, so nothing is sent or activated twice. `plan(status)` picks the activation just
    before it is asked for: (when, at_s), or None to stop with the image verified ("deferred",
    outside a maintenance window, say); a later run resumes from there."""
    ui = Stage(stage, progress)
    keep = keep or (lambda key, value: None)
    t0 = time.monotonic()
    m = img.manifest
    # A bootloader image changes the bootloader the meter runs; its application stays as it was.
    bootloader = m.get("kind") == "bootloader"

    def running(s: dict) -> str | None:
        return (s.get("bootloader") or {}).get("version") if bootloader else s.get("active_version")

    image_id = img.image_id.hex()
    st0 = meter.status()
    report = {"result": None, "reason": None, "kind": m.get("kind", "firmware"), "from_version": running(st0),
              "to_version": m["version"], "image_id": image_id, "payload_bytes": m["payload_size"],
              "image_bytes": img.size, "board": st0.get("board"), "serial": st0.get("serial"),
              "when": when, "at_s": at_s, "registers": registers, "ack": ack}

    def finish(result: str, reason: str | None = None) -> dict:
        report.update(result=result, reason=reason, seconds=round(time.monotonic() - t0, 2))
        return report

    why = precheck(img, st0.get("board"))
    if before is not None and not bootloader and _switched(st0, image_id):
        # An earlier run of this upgrade activated the image before its caller stopped.
        report.update(method="resumed", resumed="after activation")
        return _conclude(meter, report, before, expect=m["version"], wait_s=_verdict_wait_s(meter, 0),
                         t_act=None, delay_s=0, ui=ui, poll_s=poll_s, finish=finish, running=running,
                         bootloader=False, keep=keep)
    send, why_not = (img, None) if bootloader else choose(img, deltas, delta, st0.get("active_image_id"))
    why = why or why_not
    if why:
        return finish("rejected", why)
    report["method"] = "delta" if isinstance(send, Delta) else "full"
    if isinstance(send, Delta):
        report["delta_base"] = send.base_id.hex()
    ui.stage("snapshot")
    before = snapshot(meter)
    keep("before", before)
    report["before"] = summary(before)
    report["intervals_before"] = len(before["intervals"])

    try:
        ui.stage("notice")
        report["notice"] = _optional(meter.notice, {
            "version": m["version"], "image_id": image_id, "size": report["image_bytes"], "board": m["board"],
            "security_version": m["security_version"], "when": when})
        ui.stage("transfer")
        t_xfer, wire0 = time.monotonic(), meter.link.bytes_out
        try:
            up = meter.upload(send, ui.progress)
        except CommandError as e:
            if e.code != "wrong_base" or not isinstance(img, Image):
                raise
            # The meter runs another image than its status said a moment ago: the full image.
            report.update(method="full", delta_base=None)
            up = meter.upload(img, ui.progress)
        report["bytes_on_wire"] = meter.link.bytes_out - wire0
        report.update(resumed_from_block=up["resumed_from_block"], blocks=up["blocks"], transfer=up["transfer"],
                      signature_ms=up["signature_ms"])
        sent = up["bytes_sent"]
        xfer_s = max(time.monotonic() - t_xfer, 1e-6)
        report["transfer_seconds"] = round(xfer_s, 2)
        report["transfer_bytes_per_s"] = round(sent / xfer_s)
        ui.stage("verify")
        v = meter.verify()
        report["verify_ms"] = v.get("verify_ms")
        if plan is not None:
            chosen = plan(meter.status())
            if chosen is None:
                return finish("deferred", "not activated now: the image waits, verified, on the meter")
            when, at_s = chosen
            report.update(when=when, at_s=at_s)
        ui.stage("activate")
        t_act = time.monotonic()
        act = meter.activate(when, at_s, registers, ack)
    except CommandError as e:
        if e.code in REFUSALS:
            return finish("rejected", str(e).removeprefix("meter refused: "))
        raise
    report["activate_at_s"] = act.get("activate_at_s", act.get("boundary_s"))
    report["activation_deferred_s"] = act.get("deferred_s", 0)
    keep("activation", {"at_s": report["activate_at_s"], "when": when})
    meter_now = act.get("meter_time_s") or st0.get("time_s") or 0
    delay_s = max((report["activate_at_s"] or meter_now) - meter_now, 0) if report["activate_at_s"] else 0
    if when == "boundary" and not report["activate_at_s"]:
        delay_s = st0.get("interval_s") or 0
    return _conclude(meter, report, before, expect=m["version"], wait_s=_verdict_wait_s(meter, delay_s),
                     t_act=t_act, delay_s=delay_s, ui=ui, poll_s=poll_s, finish=finish, running=running,
                     bootloader=bootloader, keep=keep)


def _switched(st: dict, image_id: str) -> bool:
    """The meter runs this image now, or has reverted from it: the activation was asked for."""
    u = st.get("update") or {}
    return st.get("active_image_id") == image_id or (u.get("image_id") == image_id and u.get("result") == "reverted")


def _verdict_wait_s(meter: Meter, delay_s: float) -> float:
    # A meter that answers slowly (the link's timeout says how slowly) also boots slowly.
    return delay_s + (_WATCHDOG_S * 3 + _BOOT_S) * max(1.0, meter.link.timeout_s / DEFAULT_TIMEOUT_S)


def _conclude(meter: Meter, report: dict, before: dict, *, expect: str, wait_s: float, t_act,
              delay_s: float, ui: Stage, poll_s: float, finish, running, bootloader: bool, keep) -> dict:
    """From the activation on: the meter's verdict, the second snapshot and the comparison."""
    registers = report["registers"]
    history = before["intervals"]
    register_before = history[-1]["register_mwh"] if history else 0
    first_seq = history[-1]["seq"] if history else 0
    report.setdefault("before", summary(before))
    report.setdefault("intervals_before", len(history))
    ui.stage("waiting for the verdict")
    seen = {}

    def verdict(s: dict) -> bool:
        if "first_read" not in seen and running(s) == expect and s.get("boot_reason") == "activate":
            seen["first_read"] = time.monotonic()
        return s.get("update", {}).get("result") in ("confirmed", "reverted")

    after_st = meter.wait_until(verdict, wait_s, poll_s=poll_s)
    if "first_read" in seen and t_act is not None:
        report["activation_to_first_read_s"] = round(seen["first_read"] - t_act - delay_s, 3)
    if after_st is None:
        return finish("failed", f"no verdict from the meter within {wait_s:.0f} s of activation")
    # The verdict as the meter seals it: the polls above are open reads, which the link could forge.
    after_st = meter.attested(P.STATUS)
    reply.check("status reply", after_st, reply.STATUS)
    if not verdict(after_st):
        return finish("failed", "the meter's authenticated status holds no verdict: the link altered its replies")
    ui.stage("snapshot")
    after = snapshot(meter)
    keep("after", after)
    sa = after["status"]
    report["after"] = summary(after)
    report["boot_reason"] = sa.get("boot_reason")
    report["active_version"] = sa.get("active_version")
    report["bootloader_version"] = (sa.get("bootloader") or {}).get("version")
    report["health"] = sa.get("health")
    records = [r for r in after["intervals"] if r["seq"] > first_seq]
    report["intervals_after"] = len(records)
    report.update(continuity(history[-1:] + records))
    report.update(energy_check(records, register_before))
    reverted = after_st["update"]["result"] == "reverted"
    report["discrepancies"] = compare(before, after, registers=registers,
                                      expect_version=before["status"].get("active_version") if reverted or bootloader
                                      else expect)
    if bootloader and not reverted and running(sa) != expect:
        report["discrepancies"].append(f"meter runs bootloader {running(sa)}, expected {expect}")
    if reverted:
        return finish("reverted", after_st["update"].get("reason") or "the meter went back to the previous image")
    return finish("confirmed")



def revert(meter: Meter, *, expect_version: str | None = None, stage: Callable[[str], None] | None = None,
           poll_s: float = 0.2, timeout_s: float = 40) -> dict:
    """The operator's revert to the previous image, with a snapshot before and after and their
    comparison. With expect_version, a meter already running it is left alone (a campaign's
    rollback resumed after its own crash must not switch a meter back a second time)."""
    ui = Stage(stage)
    t0 = time.monotonic()
    st0 = meter.status()
    report = {"result": None, "reason": None, "kind": "revert", "from_version": st0.get("active_version"),
              "to_version": expect_version, "serial": st0.get("serial"), "board": st0.get("board")}

    def finish(result: str, reason: str | None = None) -> dict:
        report.update(result=result, reason=reason, seconds=round(time.monotonic() - t0, 2))
        return report

    if expect_version is not None and st0.get("active_version") == expect_version:
        report.update(discrepancies=[], resumed="already on the previous image")
        return finish("confirmed")
    ui.stage("snapshot")
    before = snapshot(meter)
    ui.stage("revert")
    try:
        meter.revert()
    except CommandError as e:
        if e.code in ("no_previous", "on_trial", "rejected"):
            return finish("rejected", str(e).removeprefix("meter refused: "))
        raise
    ui.stage("waiting for the meter")
    after_st = meter.wait_until(lambda s: s["active_slot"] != st0["active_slot"], timeout_s, poll_s=poll_s)
    if after_st is None:
        return finish("failed", f"the meter did not come back on the previous image within {timeout_s:.0f} s")
    ui.stage("snapshot")
    after = snapshot(meter)
    report.update(to_version=after["status"].get("active_version"), before=summary(before), after=summary(after))
    report["discrepancies"] = compare(before, after, expect_version=expect_version or report["to_version"])
    return finish("confirmed")
