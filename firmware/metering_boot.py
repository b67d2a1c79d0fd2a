# Metering at start-up: reopen the interval that was open, and close the intervals a restart
# missed. Part of metering.py (it works on a Metering's insides), loaded for it and dropped
# after, so the heap carries only the close path while the meter meters.
import asyncio
import struct
from binascii import crc32
from micropython import const
import event_codes
from intervals import (POWER_DOWN, PARTIAL, ESTIMATED, SEQ, START, DURATION, REGISTER, REGISTER_RX, FRONTEND,
                       FRONTEND_RX)
from metering import OPEN_BODY, OPEN_FMT

_CATCH_UP_YIELD = const(16)  # closes between yields when many intervals close at once


def load_open(mt):
    """The open-interval record as stored, or None if there is none or it is damaged."""
    try:
        with open(mt.path, "rb") as f:
            buf = f.read()
    except OSError:
        return None
    if len(buf) != OPEN_BODY + 4 or struct.unpack_from("<I", buf, OPEN_BODY)[0] != crc32(buf[:OPEN_BODY]):
        return None
    return struct.unpack_from(OPEN_FMT, buf, 0)


def restore(mt, outage):
    """At boot: reopen the interval that was open, from its record, or from the last interval
    record when the open record is one close behind (a cut between the two writes) or gone.
    The reset bookkeeping comes from the open record even then: it is never more than one
    close behind, and a reset rewrites it before any later close."""
    last = mt.log.last
    saved = load_open(mt)
    if saved:
        mt.resets, mt.reset_mwh, mt.reset_rx_mwh, mt.reset_tag = saved[8:12]
    if saved and saved[0] == (last[SEQ] if last else 0):
        mt._set_open(saved[1], saved[6], saved[7], saved[4], saved[5], saved[2])
    elif last:
        mt._set_open(last[START] + last[DURATION], last[FRONTEND], last[FRONTEND_RX],
                     last[REGISTER], last[REGISTER_RX], 0)
        mt._save_open()
    else:  # factory-fresh meter: the first interval is partial
        now_s = mt._board.clock.time_ms() // 1000
        fe, fe_rx = mt.read_frontend()
        mt._set_open(now_s - now_s % mt.interval_s, fe, fe_rx, 0, 0, PARTIAL)
        mt._save_open()
        outage = False
    mt.outage = outage  # the MCU was without power: the intervals it spanned are flagged
    if outage:
        mt.mark(POWER_DOWN)


async def close_overdue(mt, now_ms):
    """Intervals whose boundary passed while the MCU was not running. The front-end counted all
    along but only its total is known, so it is shared over them in proportion to time; they,
    and the interval now open (which starts from such an estimated reading), are flagged
    estimated, and power-down when the MCU had lost its power."""
    fe, fe_rx = mt._reading()
    start_ms = mt.open_start_s * 1000
    span_ms = max(1, now_ms - start_ms)
    base, base_rx = mt.open_fe, mt.open_fe_rx
    total, total_rx = fe - base, fe_rx - base_rx
    extra = ESTIMATED | (POWER_DOWN if mt.outage else 0)
    flags = mt.open_flags | extra
    n = 0
    while mt.open_end_s * 1000 <= now_ms:
        end = mt.open_end_s
        part_ms = end * 1000 - start_ms
        vfe, vfe_rx = base + total * part_ms // span_ms, base_rx + total_rx * part_ms // span_ms
        mt._record(end - mt.open_start_s, flags, vfe, vfe_rx, now_ms)
        mt._set_open(end, vfe, vfe_rx, mt.open_reg, mt.open_reg_rx, extra)
        flags = extra
        n += 1
        if n % _CATCH_UP_YIELD == 0:
            await asyncio.sleep_ms(0)
    mt._save_open()
    mt.outage = False
    if mt._events:
        mt._events.log(event_codes.INTERVAL_GAP, n)
    mt.closed.set()
    mt.closed.clear()
