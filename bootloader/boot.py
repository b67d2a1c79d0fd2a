# The boot flow:
#  1. read boot control (newest valid copy) and arm the watchdog;
#  2. count a trial attempt *before* the image runs; when attempts are exhausted, revert;
#     an image that failed to come up healthy too many boots in a row gets no more tries;
#  3. check the active slot (size and SHA-256), mount it read-only at /app, import its entry;
#  4. a crash of an image on trial reverts at once; any other failure ends in the recovery
#     console rather than switching slots again, so reversion never ping-pongs (FR13).
import gc
import os
import sys
import vfs
from micropython import const
from bootloader import bootctl, eventlog, slots
from bootloader.bootctl import BootControl, NONE, REASONS, slot_path
from bootloader.image import ImageVfs
from bootloader.platform import Platform

_WATCHDOG_MS = const(8000)
_GC_EVERY = const(8192)
_REVERT = const(4)
_RECOVERY = const(5)


class NoBootableImage(Exception):
    pass


def _reason_index(board, bcb):
    if bcb.pending != NONE:
        return bcb.pending
    cause = board.reset_cause()
    return REASONS.index(cause) if cause in REASONS else 0


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _rebuild(board, events):
    """No readable boot control: boot whichever slot verifies, newest first. On a fresh
    meter that is its first boot; otherwise both copies were corrupt, which is logged."""
    bcb = BootControl()
    found = []
    for s in (0, 1):
        try:
            m, _ = slots.check(s, board.name)
            found.append((tuple(int(x) for x in m["version"].split(".")), s))
        except ValueError:
            pass
    found.sort()
    if found:
        bcb.active = found[-1][1]
        if len(found) == 2:
            bcb.previous = found[0][1]
    if any(_exists(p) for p in bootctl.PATHS):
        events.log(eventlog.BCB_RECOVERED, bcb.active)
    return bcb


def _revert_now(bcb, events, why):
    """Fall back to the previous slot before anything more of the failed image runs."""
    _, img_id = slots.manifest(bcb.active)
    if img_id is not None:
        bcb.reject(img_id)
    failed = bcb.active
    bcb.active, bcb.previous = bcb.previous, failed
    bcb.trial = NONE
    bcb.confirmed = True
    bcb.failures = 0
    bcb.reason = _REVERT
    events.log(eventlog.REVERTED, bcb.active)
    _say("reverted to slot %s: %s" % (bcb.active, why))
    try:
        from bootloader.transfer import record_failure
        record_failure(why)
    except (OSError, ValueError):
        pass  # the verdict still shows in the boot control and the event log


def _say(msg):
    # The board's debug console (stderr on the sim); never the meter's link.
    print("boot:", msg, file=sys.stderr)


def _select(board, bcb, events):
    """Decide which slot runs, persisting the decision before anything runs. Returns
    (manifest, image id) of a verified image, or raises NoBootableImage."""
    limit = board.defaults.get("trial_attempts", 3)
    events.log(eventlog.BOOT, bcb.reason)
    if bcb.trial == bcb.active:
        if bcb.attempts_left == 0:
            _revert_now(bcb, events, "image on trial did not confirm within its attempts")
        else:
            bcb.attempts_left -= 1
            events.log(eventlog.TRIAL_ATTEMPT, bcb.attempts_left)
    elif bcb.failures >= limit:
        bcb.save()
        raise NoBootableImage("image failed to come up healthy %d boots in a row" % bcb.failures)
    bcb.failures += 1  # cleared by the application once it is healthy
    bcb.save()  # the attempt counts before the image runs
    try:
        return slots.check(bcb.active, board.name)
    except ValueError as e:
        if bcb.trial != bcb.active or bcb.previous == NONE:
            raise NoBootableImage("active image does not verify: %s" % e)
        _revert_now(bcb, events, "image on trial does not verify: %s" % e)
        bcb.save()
    try:
        return slots.check(bcb.active, board.name)
    except ValueError as e:
        raise NoBootableImage("previous image does not verify either: %s" % e)


def start(board):
    # Collect every 8 KB allocated rather than when the heap is full: loading the image leaves
    # KBs of garbage between long-lived objects, and a collection that comes only when the heap
    # is exhausted leaves them strewn across all of it. Verify then finds 90 KB free in pieces
    # of 6 KB and cannot import Ed25519; with the threshold the free heap stays in one piece.
    gc.threshold(_GC_EVERY)
    events = eventlog.EventLog(board.clock)
    bcb = BootControl.load() or _rebuild(board, events)
    bcb.reason = _reason_index(board, bcb)
    bcb.pending = NONE
    wdt = board.watchdog(board.defaults.get("watchdog_ms", _WATCHDOG_MS))
    try:
        manifest, image_id = _select(board, bcb, events)
    except NoBootableImage as e:
        _recover(board, bcb, events, wdt, str(e))
        return
    vfs.mount(ImageVfs(slot_path(bcb.active)), "/app")
    sys.path.insert(0, "/app")
    platform = Platform(board, bcb, events, wdt, manifest, image_id)
    try:
        app = __import__(manifest["entry"])
        app.main(platform)
    except Exception as e:  # any failure of the image is a failed boot, not a bootloader fault
        sys.print_exception(e, sys.stderr)
        events.log(eventlog.APP_CRASH, bcb.active)
        if platform.in_trial and platform.can_revert():
            platform.revert(reject=True, why="image on trial crashed: %s" % e)
        board.reset()  # counted as a failed boot; enough of them open the recovery console


def _recover(board, bcb, events, wdt, why):
    from bootloader.recovery import RecoveryConsole

    _say("recovery console: " + why)
    bcb.reason = _RECOVERY
    events.log(eventlog.RECOVERY, bcb.active)
    RecoveryConsole(board, bcb, events, wdt, why).run()
