# The platform's part of the meter's status (slots, boot control, bootloader) and can_revert: the
# host's most frequent request, so a small module, and only the other slot's head is read for it.
import json
from bootloader import image, slots
from bootloader.bootctl import NONE, SLOT_NAMES


def can_revert(p, heads=None):
    """A previous image that reads and is not below the security floor."""
    b = p.bcb
    m = b.previous != NONE and (heads[b.previous] if heads else slots.manifest(b.previous)[0])
    return bool(m) and not image.below_floor(m, b.floor)


def status(p):
    b, r = p.bcb, p.record
    heads = [p.manifest if s == p.slot and p.manifest else slots.manifest(s)[0] for s in (0, 1)]
    if p.serial is False:
        try:
            with open("/identity.json") as f:
                p.serial = json.load(f).get("serial")
        except (OSError, ValueError, AttributeError):
            p.serial = None
    return {
        "board": p.board.name, "serial": p.serial,
        "active_slot": SLOT_NAMES[b.active], "active_version": heads[b.active] and heads[b.active]["version"],
        "confirmed": b.confirmed, "trial": p.in_trial,
        "slots": {SLOT_NAMES[s]: {"version": m and m["version"]} for s, m in enumerate(heads)},
        "boot_reason": p.boot_reason, "bootloader_version": r.version,
        "bootloader": {"version": r.version, "copy": "ab"[r.active], "trial": bool(r.trial),
                       "security_version": r.security, "floor": r.floor},
        "security_floor": b.floor, "can_revert": can_revert(p, heads),
        "rejected": [x.hex() for x in b.rejected],
    }
