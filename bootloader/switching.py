# Switching what the meter runs: activating an update (an image in a slot, or a bootloader
# installed into the other copy), confirming, reverting, allowing a rejected image again, and the
# verdicts on a bootloader's trial. Each runs once a boot, on an operator's request, or resets the
# meter, so Platform loads this module for each call (platform.py).
from bootloader import eventlog, image, slots
from bootloader.bootctl import ACTIVATE, NONE, REVERT, STAGING


def activate(p, slot):
    """Start a trial of the verified update in `slot` and reset into it: an image in a slot,
    or a bootloader in staging, installed into the other copy. Does not return."""
    if p.before_switch:
        p.before_switch()
    b = p.bcb
    attempts = p.board.defaults.get("trial_attempts", 3)
    if slot == STAGING:
        from bootloader import copies
        try:
            p.events.log(eventlog.BOOTLOADER_TRIAL, copies.install(p.record, attempts))
        except (OSError, ValueError) as e:  # the running copy and its record are as they were
            _bootloader_reason("install failed: %s" % e)
    else:
        b.previous = b.active
        b.active = slot
        b.trial = slot
        b.attempts_left = attempts
        b.confirmed = False
        p.events.log(eventlog.FW_ACTIVATED, slot)
    b.pending = ACTIVATE
    b.save()
    p.board.reset()


def confirm(p):
    b = p.bcb
    if b.confirmed and b.trial == NONE:
        return False
    b.trial = NONE
    b.confirmed = True
    b.failures = 0
    b.floor = max(b.floor, p.manifest["security_version"])
    # A revert target below the floor just raised could never run again (anti-rollback): it stops
    # being one, and the event log says so.
    dropped = None
    if b.previous != NONE:
        m, _ = slots.manifest(b.previous)
        if m is not None and image.below_floor(m, b.floor):
            b.previous, dropped = NONE, m["security_version"]
    b.save()
    p.events.log(eventlog.CONFIRMED, b.floor)
    if dropped is not None:
        p.events.log(eventlog.REVERT_TARGET_DROPPED, dropped)
    return True


def mark_healthy(p):
    """This boot came up healthy: it did not fail, and a bootloader on trial confirms itself."""
    if p.bcb.failures:
        p.bcb.failures = 0
        p.bcb.save()
    r = p.record
    if r.trial:
        r.trial = 0
        r.floor = max(r.floor, r.security)
        r.save()
        p.events.log(eventlog.BOOTLOADER_CONFIRMED, r.security)


def mark_unhealthy(p, why):
    """A critical check failed this boot: an image on trial is reverted, a bootloader on
    trial falls back (neither returns); otherwise the application reports it and stays."""
    if p.in_trial and p.can_revert():
        revert(p, True, why, "health")
    if p.record.trial:
        bootloader_failed(p, why)


def bootloader_failed(p, why):
    """This bootloader, on trial, did not bring up a healthy application: the first stage
    runs the other copy again, which it never touched. Does not return."""
    _bootloader_reason("on trial: %s" % why)
    p.record.fall_back()
    p.board.reset()


def _bootloader_reason(why):
    from bootloader import update_state

    s = update_state.load()
    if s.get("kind") == "bootloader" and not s.get("reason"):
        s["reason"] = "bootloader %s %s" % (s.get("version"), why)
        update_state.store(s)


def unreject(p, image_id):
    """An operator's authenticated decision to allow a rejected image again."""
    if image_id in p.bcb.rejected:
        p.bcb.rejected.remove(image_id)
        p.bcb.save()
        p.events.log(eventlog.UNREJECTED, 0)
        return True
    return False


def revert(p, reject=False, why=None, cause=None):
    """Go back to the previous slot and reset. Does not return. Raises ValueError if none.
    `cause` (update_state.CAUSES) marks an automatic revert, which raises an alarm."""
    b = p.bcb
    if not p.can_revert():
        raise ValueError("no previous image to revert to")
    if not reject and p.before_switch:
        p.before_switch()
    if reject and p.image_id is not None:
        b.reject(p.image_id)
        if why:
            from bootloader.update_state import record_failure
            record_failure(why, cause, p.events.next_seq)  # the seq REVERTED gets below
    b.back()
    b.pending = REVERT
    b.save()
    p.events.log(eventlog.REVERTED, b.active)
    p.board.reset()
