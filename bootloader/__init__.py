# The bootloader, the meter's platform: slot selection, trial boots, revert, image verification,
# the link and the recovery console. The application calls it through api.py; the first stage
# (main.py) runs one of its two copies, and it updates itself through them (copies.py).
VERSION = "0.1.0"


def forget(name):
    """Drop a bootloader module loaded for one task (Ed25519 for a verify, the event names
    for a read) so its code leaves the heap once nothing refers to it."""
    import sys

    sys.modules.pop(__name__ + "." + name, None)
    globals().pop(name, None)


def call(name, op, *args):
    """op(*args) of the bootloader module `name`, loaded for the call and forgotten after it."""
    module = __import__(__name__ + "." + name, None, None, (op,))
    try:
        return getattr(module, op)(*args)
    finally:
        forget(name)
