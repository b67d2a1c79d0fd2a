# The boot decision, steps 1-3 of boot.py's flow: made once per boot, and dropped before the
# application is imported, so its code is not on the heap while the meter runs.
import asyncio
import os
import sys
from micropython import const
from bootloader import bootctl, eventlog, image, slots
from bootloader.bootctl import BootControl, NONE, REASONS, REVERT

_BOOT_CHUNK = const(4096)


class NoBootableImage(Exception):
    pass


def _reason_index(board, bcb):
    if bcb.pending != NONE:
        return bcb.pending
    cause = board.reset_cause()
    return REASONS.index(cause) if cause in REASONS else 0


def _check(slot, board, floor):
    # Nothing else runs yet: the slot check's pauses for other tasks pass at once, and the heap
    # is empty enough for a larger chunk (fewer steps: ~60 ms less for a 200 KB image on a Pico).
    return asyncio.run(slots.check(slot, board.name, floor, chunk=_BOOT_CHUNK))


def _rebuild(board, events):
    """No readable boot control: boot whichever slot verifies, newest first. On a fresh
    meter that is its first boot; otherwise both copies were corrupt, which is logged."""
    bcb = BootControl()
    found = []
    for s in (0, 1):
        try:
            m, _ = _check(s, board, 0)  # the floor went with the boot control
            found.append((image.version_tuple(m["version"]), s))
        except ValueError:
            pass
    found.sort()
    if found:
        bcb.active = found[-1][1]
        if len(found) == 2:
            bcb.previous = found[0][1]
    if any("/boot/" + n in bootctl.PATHS for n in os.listdir("/boot")):
        events.log(eventlog.BCB_RECOVERED, bcb.active)
    return bcb


def _revert_now(bcb, events, why, cause):
    """Fall back to the previous slot before anything more of the failed image runs."""
    _, img_id = slots.manifest(bcb.active)
    if img_id is not None:
        bcb.reject(img_id)
    bcb.back()
    bcb.reason = REVERT
    seq = events.next_seq
    events.log(eventlog.REVERTED, bcb.active)
    print("boot: reverted to slot %s: %s" % (bcb.active, why), file=sys.stderr)  # the debug console
    try:
        from bootloader.update_state import record_failure
        record_failure(why, cause, seq)
    except (OSError, ValueError):
        pass  # the verdict still shows in the boot control and the event log


def _select(board, bcb, events, bootloader_trial):
    """Decide which slot runs, persisting the decision before anything runs. Returns
    (manifest, image id) of a verified image, or raises NoBootableImage. A boot under a
    bootloader on trial counts against the bootloader (the first stage's record), not the image."""
    limit = board.defaults.get("trial_attempts", 3)
    events.log(eventlog.BOOT, bcb.reason)
    if bcb.trial == bcb.active:
        if bcb.attempts_left == 0:
            # A last attempt that ended in a watchdog reset hung; else the power went, or a reset.
            if REASONS[bcb.reason] == "watchdog":
                _revert_now(bcb, events, "image on trial hung: it did not confirm within its attempts", "hang")
            else:
                _revert_now(bcb, events, "image on trial did not confirm within its attempts", "attempts")
        else:
            bcb.attempts_left -= 1
            events.log(eventlog.TRIAL_ATTEMPT, bcb.attempts_left)
    elif bcb.failures >= limit:
        bcb.save()
        raise NoBootableImage("image failed to come up healthy %d boots in a row" % bcb.failures)
    if not bootloader_trial:
        bcb.failures += 1  # cleared by the application once it is healthy
    bcb.save()  # the attempt counts before the image runs
    try:
        return _check(bcb.active, board, bcb.floor)
    except ValueError as e:
        if bcb.trial != bcb.active or bcb.previous == NONE:
            raise NoBootableImage("active image does not verify: %s" % e)
        _revert_now(bcb, events, "image on trial does not verify: %s" % e, "verify")
        bcb.save()
    try:
        return _check(bcb.active, board, bcb.floor)
    except ValueError as e:
        raise NoBootableImage("previous image does not verify either: %s" % e)


def decide(board, events, record):
    """(boot control, (manifest, image id) of the image to run or None, why not); and on the
    first stage's `record`, this copy's version and a bootloader activation's verdict."""
    try:
        out = choose(board, events, record.trial)
    except Exception as e:  # a defect of ours, or flash no reader expected: never the REPL
        sys.print_exception(e, sys.stderr)
        out = BootControl.load() or BootControl(), None, "boot selection failed: %r" % e
    from bootloader import copies

    copies.settle(record, events)
    return out


def choose(board, events, bootloader_trial):
    """(boot control, (manifest, image id) of the image to run or None, why not)."""
    bcb = BootControl.load() or _rebuild(board, events)
    bcb.reason = _reason_index(board, bcb)
    bcb.pending = NONE
    try:
        return bcb, _select(board, bcb, events, bootloader_trial), None
    except NoBootableImage as e:
        return bcb, None, str(e)
