# The boot flow, once the first stage (/main.py) has armed the watchdog and chosen this copy of
# the bootloader:
#  1. read boot control (newest valid copy);
#  2. count a trial attempt *before* the image runs; when attempts are exhausted, revert;
#     an image that failed to come up healthy too many boots in a row gets no more tries;
#  3. check the active slot (size and SHA-256), mount it read-only at /app, import its entry;
#  4. a crash of an image on trial reverts at once; any other failure ends in the recovery
#     console rather than switching slots again, so reversion never ping-pongs (FR13);
#  5. a bootloader on trial that cannot bring up an application is the failure: the first stage's
#     record falls back to the other copy, and the meter resets into it.
# Steps 1-3 up to the mount are selection.py, loaded for the decision and dropped before the
# application is imported.
import gc
import sys
import vfs
from micropython import const
from bootloader import eventlog, forget
from bootloader.bootctl import slot_path
from bootloader.image import ImageVfs
from bootloader.platform import Platform

_GC_EVERY = const(8192)


def start(board, wdt, record):
    """Run the meter: `wdt` is the watchdog the first stage armed, `record` its choice of this
    copy (on trial or not)."""
    # Collect every 8 KB allocated rather than when the heap is full: loading the image leaves
    # KBs of garbage between long-lived objects, and a collection that comes only when the heap
    # is exhausted leaves them strewn across all of it. Verify then finds 90 KB free in pieces
    # of 6 KB and cannot import Ed25519; with the threshold the free heap stays in one piece.
    gc.threshold(_GC_EVERY)
    events = eventlog.EventLog(board.clock)
    from bootloader import selection

    bcb, chosen, why = selection.decide(board, events, record)
    del selection
    for name in ("selection", "copies", "update_state"):
        forget(name)
    if chosen is None:
        from bootloader import recovery

        recovery.console(Platform(board, bcb, events, wdt, record, None, None), why)
        return
    manifest, image_id = chosen
    platform = Platform(board, bcb, events, wdt, record, manifest, image_id)
    try:
        # The slot's file table is read here: a malformed one is a failed boot like a crash.
        vfs.mount(ImageVfs(slot_path(bcb.active)), "/app")
        sys.path.insert(0, "/app")
        app = __import__(manifest["entry"])
        app.main(platform)
    except Exception as e:  # any failure of the image is a failed boot, not a bootloader fault
        sys.print_exception(e, sys.stderr)
        events.log(eventlog.APP_CRASH, bcb.active)
        if platform.in_trial and platform.can_revert():
            platform.revert(True, "image on trial crashed: %s" % e, "crash")
        if record.trial:
            platform.bootloader_failed("the application crashed: %s" % e)
        board.reset()  # counted as a failed boot; enough of them open the recovery console

