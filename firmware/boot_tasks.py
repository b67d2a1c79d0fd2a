# What the application does once at boot, beside metering: report a recovered meter state,
# read the relay's latched position (never moving it, FR2), post the customer notice a switch
# calls for, run and report the post-boot health check, confirm or revert, and apply what the
# activation asked of the new image. Loaded for it and dropped after (app.py).
import codes
from intervals import FIRMWARE_CHANGE


def _pos(closed):
    return "connected" if closed else "disconnected"


def at_start(m):
    """At boot: report a meter state that had to be recovered, and read the relay's latched
    position against the meter state (no coil is pulsed)."""
    why = m.state.recovered
    if why:
        m.p.events.log(codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1)
        m.outbox.post(codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1, "meter state: " + why)
    hw = getattr(m.board, "relay", None)
    if hw is None:
        return
    closed = hw.closed()
    if closed != m.state.relay_connected:
        m.p.events.log(codes.RELAY_MISMATCH, 1 if closed else 0)
        m.outbox.post(codes.RELAY_MISMATCH, 1 if closed else 0,
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
    t = m.agent.transfer.state
    if m.p.boot_reason == "activate" and m.p.image_id and t.get("id") == m.p.image_id.hex():
        if t.get("ack") in ("immediate", "next-read"):
            return t["ack"] == "immediate"
    return None


def after_health(m, results):
    """Report the post-boot health check: each critical or important failure goes into the
    outbox (a connected host has it within seconds), and the result into the event log.
    Returns the critical failures, as "item: message"."""
    import health
    from bootloader import eventlog
    from meter_state import HEALTH_ITEMS
    failed = [(n, s, msg or "failed") for n, s, st, msg, _ in results if st == health.FAIL and s != health.INFO]
    now = report_now(m)
    for n, s, msg in failed:
        m.outbox.post(codes.HEALTH_CRITICAL if s == health.CRITICAL else codes.HEALTH_IMPORTANT,
                      HEALTH_ITEMS.index(n) if n in HEALTH_ITEMS else 255, n + ": " + msg, now)
    for n, _, _ in failed:  # the DLMS standard event log has codes of its own for these two
        if n in ("data", "metrology"):
            m.p.events.log(codes.NV_MEMORY_ERROR if n == "data" else codes.MEASUREMENT_ERROR, 0)
    critical = [n + ": " + msg for n, s, msg in failed if s == health.CRITICAL]
    if failed:
        m.p.events.log(eventlog.HEALTH_FAILED, 1 if critical else 2)
    else:
        m.p.events.log(codes.HEALTH_PASSED, len(results))
    return critical


def after_confirm(m, confirmed_now):
    """A healthy image: the notice when this boot confirmed it, and the register reset the
    activation asked for (FR3), once per image (its id is the reset's tag)."""
    p = m.p
    t = m.agent.transfer.state
    if confirmed_now:
        m.notices.show("Meter software updated to %s" % p.manifest["version"])
    if p.image_id and t.get("id") == p.image_id.hex():
        if t.get("registers") == "reset":
            m.metering.reset_registers(p.image_id)


async def post_boot(m, load):
    """The post-boot health check and its verdict: confirm an image on trial that passes,
    revert one that fails a critical check. `load` imports a module for the task (app.py)."""
    p = m.p
    if p.boot_reason in ("activate", "revert"):
        m.metering.mark(FIRMWARE_CHANGE)
    m.agent.transfer.settle(p.image_id)
    boot_notice(m)
    if not m.metering.clock_valid(m.board.clock.time_ms() // 1000):
        p.events.log(codes.CLOCK_INVALID, 0)
        m.outbox.post(codes.CLOCK_INVALID, 0, "clock invalid at start-up")
    results = await (await load("health")).run(m)
    # An absent interface is ok here but keeps its message; `meterfw health` shows its status.
    m.health = [{"check": n, "severity": s, "ok": st != "fail", "message": msg} for n, s, st, msg, _ in results]
    critical = after_health(m, results)
    if critical and p.in_trial:
        p.revert(reject=True, why="critical health check failed: " + "; ".join(critical))
    if critical:
        return  # a confirmed image stays; the failure is reported and the boot counts as failed
    p.healthy()
    trial = p.in_trial
    if trial:
        p.confirm()
        m.agent.transfer.confirmed()
    after_confirm(m, trial)
