# The boot flow: read boot control, count a trial attempt before running it, check the
# active slot, mount it read-only at /app and hand over to its entry module.
import os
import sys
import vfs
from micropython import const
from bootloader import bootctl, eventlog, slots
from bootloader.bootctl import BootControl, NONE, REASONS
from bootloader.image import ImageVfs
from bootloader.platform import Platform
from bootloader.bootctl import slot_path

_WATCHDOG_MS = const(8000)
_REVERT = const(4)


def _reason_index(board, bcb):
    if bcb.pending != NONE:
        return bcb.pending
    cause = board.reset_cause()
    return REASONS.index(cause) if cause in REASONS else 0


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
    if any(_exists(p) for p in bootctl.PATHS):
        events.log(eventlog.BCB_RECOVERED, bcb.active)
    return bcb


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _revert_now(bcb, events, image_id, why):
    """Fall back to the previous slot before anything of the failed image ran."""
    if image_id is not None:
        bcb.reject(image_id)
    failed = bcb.active
    bcb.active, bcb.previous = bcb.previous, failed
    bcb.trial = NONE
    bcb.confirmed = True
    bcb.reason = _REVERT
    bcb.save()
    events.log(eventlog.REVERTED, bcb.active)
    board_log(why)


def board_log(msg):
    print("boot:", msg, file=sys.stderr)


def start(board):
    events = eventlog.EventLog(board.clock)
    bcb = BootControl.load() or _rebuild(board, events)
    bcb.reason = _reason_index(board, bcb)
    bcb.pending = NONE
    wdt = board.watchdog(board.defaults.get("watchdog_ms", _WATCHDOG_MS))
    if bcb.trial == bcb.active:
        if bcb.attempts_left == 0:
            _, img_id = slots.manifest(bcb.active)
            _revert_now(bcb, events, img_id, "trial attempts exhausted")
        else:
            bcb.attempts_left -= 1
            events.log(eventlog.TRIAL_ATTEMPT, bcb.attempts_left)
    bcb.save()  # the attempt counts before the image runs
    events.log(eventlog.BOOT, bcb.reason)
    try:
        manifest, image_id = slots.check(bcb.active, board.name)
    except ValueError as e:
        if bcb.trial != bcb.active or bcb.previous == NONE:
            raise  # no image to fall back to: the recovery console's job
        _revert_now(bcb, events, slots.manifest(bcb.active)[1], str(e))
        manifest, image_id = slots.check(bcb.active, board.name)
    vfs.mount(ImageVfs(slot_path(bcb.active)), "/app")
    sys.path.insert(0, "/app")
    platform = Platform(board, bcb, events, wdt, manifest, image_id)
    try:
        app = __import__(manifest["entry"])
        app.main(platform)
    except Exception as e:  # any failure of the image is a failed boot, not a bootloader fault
        sys.print_exception(e, sys.stderr)
        events.log(eventlog.APP_CRASH, bcb.active)
        if platform.in_trial and bcb.previous != NONE:
            platform.revert(reject=True)
        board.reset()
