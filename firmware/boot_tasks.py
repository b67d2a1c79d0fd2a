# What the application does once at boot, beside metering: report a recovered meter state,
# read the relay's latched position (never moving it, FR2), raise an automatic revert's alarm,
# post the customer notice a switch calls for, run and report the post-boot health check,
# confirm or revert, and apply what the activation asked of the new image. Loaded for it and
# dropped after (loader.py).
import asyncio
import event_codes
import loader
from bootloader import api as P
from intervals import FIRMWARE_CHANGE

update_state = P.update_state()  # dropped with this module (loader.py)


def _pos(closed):
    return "connected" if closed else "disconnected"


def at_start(m):
    """At boot: report a meter state that had to be recovered, and read the relay's latched
    position against the meter state (no coil is pulsed)."""
    why = m.state.recovered
    if why:
        m.p.events.log(event_codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1)
        m.outbox.post(event_codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1, "meter state: " + why)
    hw = m.board.relay
    if hw is None:
        return
    closed = hw.closed()
    if closed != m.state.relay_connected:
        m.p.events.log(event_codes.RELAY_MISMATCH, 1 if closed else 0)
        m.outbox.post(event_codes.RELAY_MISMATCH, 1 if closed else 0,
                      "relay is %s; meter state says %s" % (_pos(closed), _pos(m.state.relay_connected)))


def boot_notice(m):
    """Customer notice (FR32) for a boot a switch caused: installing (on trial), or undone."""
    p = m.p
    if p.boot_reason == "activate" and p.in_trial:
        m.notices.show("Installing meter software %s; supply unaffected" % p.manifest["version"])
    elif p.boot_reason == "revert":
        m.notices.show("Meter software update undone; running %s" % p.manifest["version"])


def report_now(m):
    """On a new image's first boots the activation's ack option decides how its failures are
    reported (FR16); otherwise (None) the reporting policy in the meter state does."""
    t = update_state.load()
    if m.p.boot_reason == "activate" and m.p.image_id and t.get("id") == m.p.image_id.hex():
        if t.get("ack") in ("immediate", "next-read"):
            return t["ack"] == "immediate"
    return None


def revert_alarm(m):
    """One alarm (FR15) for an automatic revert, raised by the image the meter went back to:
    its value the cause, its message the failed version and why. The failed activation's ack
    option decides how it is reported, else the reporting policy. The outbox keeps the revert's
    name (its event-log seq) in the alarm's own write: a power cut anywhere in this boot neither
    loses it (a later boot posts it) nor doubles it. An operator's revert has no cause: no alarm."""
    t = update_state.load()
    cause = t.get("cause")
    if t.get("result") != "reverted" or not cause or t.get("id") == (m.p.image_id and m.p.image_id.hex()):
        return  # no automatic revert, or its record stored but the failed image runs again
    ack = t.get("ack")
    now = ack == "immediate" if ack in ("immediate", "next-read") else None
    causes = update_state.CAUSES
    m.outbox.post(event_codes.FIRMWARE_REVERTED, causes.index(cause) if cause in causes else 255,
                  "%s reverted (%s): %s" % (t.get("version"), cause, t.get("reason")), now,
                  "revert %s" % t.get("revert_event"))


def after_health(m, results):
    """Report the post-boot health check: each critical or important failure goes into the
    outbox (a connected host has it within seconds), and the result into the event log.
    Returns the critical failures, as "item: message"."""
    from meter_state import HEALTH_ITEMS
    # The check's words (health.py's FAIL, INFO, CRITICAL), as the host reads them too: the
    # check's code has left the heap by now.
    failed = [(n, s, msg or "failed") for n, s, st, msg, _ in results if st == "fail" and s != "info"]
    now = report_now(m)
    for n, s, msg in failed:
        m.outbox.post(event_codes.HEALTH_CRITICAL if s == "critical" else event_codes.HEALTH_IMPORTANT,
                      HEALTH_ITEMS.index(n) if n in HEALTH_ITEMS else 255, n + ": " + msg, now)
    for n, _, _ in failed:  # the DLMS standard event log has codes of its own for these two
        if n in ("data", "metrology"):
            m.p.events.log(event_codes.NV_MEMORY_ERROR if n == "data" else event_codes.MEASUREMENT_ERROR, 0)
    critical = [n + ": " + msg for n, s, msg in failed if s == "critical"]
    if failed:
        m.p.events.log(event_codes.HEALTH_FAILED, 1 if critical else 2)
    else:
        m.p.events.log(event_codes.HEALTH_PASSED, len(results))
    return critical


def after_confirm(m, confirmed_now):
    """A healthy image: the notice when this boot confirmed it, and the register reset the
    activation asked for (FR3), once per image (its id is the reset's tag)."""
    p = m.p
    t = update_state.load()
    if confirmed_now:
        m.notices.show("Meter software updated to %s" % p.manifest["version"])
    if p.image_id and t.get("id") == p.image_id.hex():
        if t.get("registers") == "reset":
            import metering_reset
            metering_reset.reset(m.metering, p.image_id)


async def post_boot(m):
    """What a boot does beside metering: at_start(), the update agent when an activation may
    be waiting for its time, then the post-boot health check and its verdict: confirm an image
    on trial that passes, revert one that fails a critical check."""
    at_start(m)  # the relay's latched position is read, never moved (FR2)
    if update_state.load()["status"] == P.VERIFIED:
        await m.updates()
    p = m.p
    if p.boot_reason in ("activate", "revert"):
        m.metering.open.mark(FIRMWARE_CHANGE)
    if update_state.settle(p.image_id):
        _reload_update_state(m)
    revert_alarm(m)
    boot_notice(m)
    import metering_clock
    if not metering_clock.valid(m.metering, m.board.clock.time_ms() // 1000):
        p.events.log(event_codes.CLOCK_INVALID, 0)
        m.outbox.post(event_codes.CLOCK_INVALID, 0, "clock invalid at start-up")
    await asyncio.sleep_ms(0)  # a request waiting since the boot is answered before the check loads
    await m.metering.clear_of_close()
    results = await loader.run("health", "run", m, None, True)  # no host time; at boot
    # An absent interface is ok here but keeps its message; `meterfw health` shows its status.
    m.health = [{"check": n, "severity": s, "ok": st != "fail", "message": msg} for n, s, st, msg, _ in results]
    critical = after_health(m, results)
    if critical:
        # An image on trial is reverted, a bootloader on trial falls back (neither returns); a
        # confirmed image stays, the failure reported and the boot counted as failed.
        p.mark_unhealthy("critical health check failed: " + "; ".join(critical))
        return
    p.mark_healthy()
    trial = p.in_trial
    if trial:
        p.confirm()
    # Also when the boot control is confirmed already: power lost after p.confirm() stored it
    # and before the update's state recorded it would leave that state on trial for good.
    if update_state.confirmed():
        _reload_update_state(m)
    after_confirm(m, trial)


def _reload_update_state(m):
    # The update agent, once a request has loaded it, holds the stored update state in RAM and
    # answers status from that copy: what the boot tasks just stored must reach it (a host that
    # asked for the update state during a trial saw "trial" after the confirmation, for good).
    if m.agent is not None:
        m.agent.transfer.state = update_state.load()
