# The platform's contract with the application, in the manner of MCUboot's bootutil and
# flash_map headers: an application imports the platform through this module alone. An image's
# manifest names the platform API it needs ("api"); admission and the boot refuse an image that
# needs a newer one than this bootloader provides. A later platform keeps every name below with
# its meaning, or raises VERSION past what older images ask for.
#
# PLATFORM API 1. What the platform provides:
#   - The entry module's main(platform) is called with a Platform (platform.py):
#       board             the board (boards/README.md lists what every board has)
#       events            the event log: log(code, value); page(request, most, named=None)
#       watchdog          feed() at least every watchdog period
#       manifest, image_id  the running image's manifest (a dict) and id (SHA-256 of the manifest)
#       boot_reason       "power-on", "watchdog", "reset", "activate", "revert" or "recovery"
#       in_trial          the running image is on trial
#       status()          the platform's part of the meter's status (slots, boot control, bootloader)
#       slot, inactive_slot  the active slot and the other, for the boot
#       can_revert()      there is a previous image, not below the security floor
#       unreject(image_id)  an operator allows a rejected image again; False if it was not
#       activate(slot)    switch to the verified update in `slot` (an image, or a bootloader in
#                         staging); no return
#       revert(reject=False, why=None, cause=None)  back to the previous image, rejecting this
#                         one when `reject` (why: the update's stated reason; cause: one of
#                         update_state's CAUSES for an automatic revert, which the image gone back
#                         to reports); ValueError if none; no return
#       mark_healthy()    this boot came up healthy: the boot counts as good, and a bootloader on
#                         trial confirms itself
#       mark_unhealthy(why)  a critical check failed: an image on trial is reverted, a bootloader
#                         on trial falls back (neither returns); else the boot counts as failed
#       confirm()         confirm an image on trial and raise the security floor; False if none
#   - Request checking for handlers: CommandError(code, message), query, field, choice, U32_MAX.
#   - The link: LinkServer(board, handlers); add(handlers, privileged); send_alarm; run();
#     requests and faults counters. The platform's command codes below.
#   - An update: admit(platform, head) checks an image head; transfer(platform, schedule) runs
#     initiate(head, admitted, base), blocks of block_size and verify; update_state() is the stored
#     state's module: none of them stays resident. A delta's `base` is the running image's id:
#     the application makes the delta's blocks from that image's file, slot_path(platform.slot).
#   - event_names(codes, default): the platform's names of its event codes.
#   - framing: the link's frames (encode, Decoder), for the application's link self-test.
#   - forget(name): drop a platform module loaded on demand once nothing refers to it.
#
# What the application provides:
#   - An entry module (the manifest's "entry") with main(platform), which never returns while
#     the meter runs.
#   - platform.before_switch: fn() storing what the next image checks itself against, called
#     before every switch the running image asks for.
#   - The transfer's schedule: ms_to_next() until its next flash work, and settle(), async,
#     returning once that work has passed; the transfer grants no window across it.
#   - mark_healthy(), then confirm() when in_trial, once its critical checks pass after a boot;
#     mark_unhealthy(why) when one fails.
#   - Names of its own event codes, passed to events.page(..., named).
from micropython import const
from bootloader import framing, forget  # noqa: F401 - forget drops a module loaded on demand
from bootloader.bootctl import slot_path  # noqa: F401
from bootloader.eventlog import names as event_names
from bootloader.link import LinkServer
from bootloader.protocol import (PING, STATUS, READ_EVENTS, UPD_INITIATE, UPD_BLOCK, UPD_VERIFY,  # noqa: F401
                                 UPD_ACTIVATE, UPD_STATE, REVERT, UNREJECT, NOT_INITIATED, INITIATED,
                                 VERIFYING, VERIFIED, VERIFY_FAILED, ACTIVATING, ACTIVATED,
                                 ACTIVATION_FAILED, U32_MAX, CommandError, choice, field, query)

VERSION = const(1)


async def admit(platform, head):
    """(manifest, image id, head length, signature ms) of an initiate's image head that the meter
    takes; CommandError saying why not. Its code (and Ed25519's) leaves the heap after."""
    from bootloader import admission, forget

    try:
        return await admission.admit(platform, head)
    finally:
        forget("admission")


def transfer(platform, schedule):
    """The platform's image transfer for the application's update agent."""
    from bootloader.transfer import Transfer

    return Transfer(platform, schedule)


def update_state():
    """The stored update state's module (load, summary, settle, confirmed, record_failure,
    CAUSES)."""
    from bootloader import update_state

    return update_state
