# Register resets (FR3): the registers go to zero, their values logged first, and what they
# held is kept in the open interval's record, so lifetime energy survives. Loaded for a reset
# (loader.py).
import event_codes
from intervals import REGISTER_RESET


def _wh(mwh):
    return max(-0x7FFFFFFF, min(0x7FFFFFFF, mwh // 1000))  # event values are i32


def reset(mt, tag=None):
    """Reset both registers to zero, logging their values first. With a tag (the new image's
    id) it happens once: asking again with the same tag changes nothing. Returns the values
    before the reset, or None if this tag's reset was done already."""
    o = mt.open
    tag = bytes(tag[:16]) + bytes(16 - len(tag[:16])) if tag else bytes(16)
    if tag != bytes(16) and o.resets and tag == o.reset_tag:
        return None
    reg, reg_rx, _, _ = mt.registers()
    # Logged before the reset is stored: a power cut in between repeats the reset (and the log
    # entry) at the next request, but never resets without a record of what was there.
    if mt.events:
        mt.events.log(event_codes.REGISTERS_RESET, _wh(reg))
        mt.events.log(event_codes.REGISTERS_RESET_RECEIVED, _wh(reg_rx))
    o.register_mwh -= reg
    o.register_rx_mwh -= reg_rx
    o.reset_mwh += reg
    o.reset_rx_mwh += reg_rx
    o.resets += 1
    o.reset_tag = tag
    o.flags |= REGISTER_RESET
    o.save()  # registers and the reset's bookkeeping: one record, one write
    return {"delivered_mwh": reg, "received_mwh": reg_rx, "resets": o.resets}
