# What the application does once at boot, beside metering: report a recovered meter state,
# read the relay's latched position (never moving it, FR2), post the customer notice a switch
# calls for, run and report the post-boot health check, confirm or revert, and apply what the
# activation asked of the new image. Loaded for it and dropped after (app.py).
import commands as C
import event_codes
from bootloader import api as P
from intervals import FIRMWARE_CHANGE

update_state = P.update_state()  # dropped with this module (app.py)


def _pos(closed):
    return "connected" if closed else "disconnected"


def commands(m):
    """The link's command table for the meter `m`: (open commands, privileged commands). A
    handler is a method, or (method, argument) for one method serving many commands."""
    run, upd = m._run, m._update  # one bound method each, for all their commands
    return {
        P.PING: m.ping,
        P.READ_EVENTS: m.read_events,
        # Read from flash, or from the agent while a download runs: a read loads no agent.
        P.UPD_STATE: (run, ("cmd_status", "update_state")),
        # The runtime's commands load their code for each request and drop it after: the heap
        # holds none of it while the meter meters and downloads.
        P.STATUS: (run, ("cmd_status", "status")),
        C.READ_INTERVALS: (run, ("cmd_status", "intervals")),
        C.READ_REGISTERS: (run, ("cmd_read", "registers")),
        C.READ_STATE: (run, ("cmd_read", "state")),
        C.HEALTH: (run, ("cmd_read", "health")),
        C.TIME_GET: (run, ("cmd_read", "time_get")),
        C.READ_ALARMS: (run, ("cmd_read", "alarms")),
        C.READ_DISPLAY: (run, ("cmd_read", "display")),
    }, {
        C.UPD_NOTICE: (upd, "notice_received"),
        P.UPD_INITIATE: m.initiate,
        P.UPD_BLOCK: (upd, "block"),
        P.UPD_VERIFY: (upd, "verify"),
        P.UPD_ACTIVATE: (upd, "activate"),
        P.REVERT: (run, ("cmd_change", "revert")),
        P.UNREJECT: (run, ("cmd_change", "unreject")),
        C.SET_STATE: (run, ("cmd_change", "set_state")),
        C.TIME_SET: (run, ("cmd_change", "time_set")),
        C.RELAY: (run, ("cmd_change", "relay")),
        C.ACK_ALARMS: (run, ("cmd_change", "ack")),
        C.RESET_REGISTERS: (run, ("cmd_change", "reset_registers")),
    }


def at_start(m):
    """At boot: report a meter state that had to be recovered, read the relay's latched
    position against the meter state (no coil is pulsed), and load the update agent when an
    activation may be waiting for its time."""
    if update_state.load()["status"] == P.VERIFIED:
        m.updates_now()
    why = m.state.recovered
    if why:
        m.p.events.log(event_codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1)
        m.outbox.post(event_codes.STATE_RECOVERED, 0 if why == "unrenamed copy" else 1, "meter state: " + why)
    hw = getattr(m.board, "relay", None)
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


def after_health(m, results):
    """Report the post-boot health check: each critical or important failure goes into the
    outbox (a connected host has it within seconds), and the result into the event log.
    Returns the critical failures, as "item: message"."""
    import health
    from meter_state import HEALTH_ITEMS
    failed = [(n, s, msg or "failed") for n, s, st, msg, _ in results if st == health.FAIL and s != health.INFO]
    now = report_now(m)
    for n, s, msg in failed:
        m.outbox.post(event_codes.HEALTH_CRITICAL if s == health.CRITICAL else event_codes.HEALTH_IMPORTANT,
                      HEALTH_ITEMS.index(n) if n in HEALTH_ITEMS else 255, n + ": " + msg, now)
    for n, _, _ in failed:  # the DLMS standard event log has codes of its own for these two
        if n in ("data", "metrology"):
            m.p.events.log(event_codes.NV_MEMORY_ERROR if n == "data" else event_codes.MEASUREMENT_ERROR, 0)
    critical = [n + ": " + msg for n, s, msg in failed if s == health.CRITICAL]
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
            m.metering.reset_registers(p.image_id)


async def post_boot(m, load):
    """The post-boot health check and its verdict: confirm an image on trial that passes,
    revert one that fails a critical check. `load` imports a module for the task (app.py)."""
    p = m.p
    if p.boot_reason in ("activate", "revert"):
        m.metering.mark(FIRMWARE_CHANGE)
    if update_state.settle(p.image_id):
        _reload_update_state(m)
    boot_notice(m)
    if not m.metering.clock_valid(m.board.clock.time_ms() // 1000):
        p.events.log(event_codes.CLOCK_INVALID, 0)
        m.outbox.post(event_codes.CLOCK_INVALID, 0, "clock invalid at start-up")
    results = await (await load("health")).run(m, at_boot=True)
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
