# The part of the meter that is never upgraded over the air: slot selection, trial boots,
# revert, image verification and the recovery console. The application calls it as its
# stable platform (boot control, image checks, framing, event log).
VERSION = "0.1.0"


def forget(name):
    """Drop a bootloader module loaded for one task (Ed25519 for a verify, the event names
    for a read) so its code leaves the heap once nothing refers to it."""
    import sys

    sys.modules.pop(__name__ + "." + name, None)
    globals().pop(name, None)
