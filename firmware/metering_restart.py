# Metering after a restart, of the MCU or of the metrology front-end: reopen the interval that
# was open from its record, close the intervals whose boundary passed while the MCU was not
# running, and carry on from a front-end that lost its count. Loaded for each (loader.py): the
# heap carries only the close path while the meter meters.
import asyncio
import struct
from binascii import crc32
from micropython import const
import event_codes
from intervals import (POWER_DOWN, PARTIAL, ESTIMATED, SEQ, START, DURATION, REGISTER, REGISTER_RX, FRONTEND,
                       FRONTEND_RX)
from metering import OPEN_BODY, OPEN_FMT

_CATCH_UP_YIELD = const(16)  # closes between yields when many intervals close at once


def _log(mt, code, value):
    if mt.events:
        mt.events.log(code, value)


def load(open_interval):
    """The open interval's record as stored (OPEN_FMT's fields), or None if there is none or it
    is damaged."""
    try:
        with open(open_interval.path, "rb") as f:
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
    o = mt.open
    last = mt.log.last
    saved = load(o)
    if saved:
        o.resets, o.reset_mwh, o.reset_rx_mwh, o.reset_tag = saved[8:12]
    if saved and saved[0] == (last[SEQ] if last else 0):
        o.begin(saved[1], saved[6], saved[7], saved[4], saved[5], saved[2])
    elif last:
        o.begin(last[START] + last[DURATION], last[FRONTEND], last[FRONTEND_RX], last[REGISTER], last[REGISTER_RX], 0)
        o.save()
    else:  # factory-fresh meter: the first interval is partial
        now_s = mt.board.clock.time_ms() // 1000
        fe, fe_rx = mt.board.energies_mwh()
        o.begin(now_s - now_s % mt.interval_s, fe, fe_rx, 0, 0, PARTIAL)
        o.save()
        outage = False
    mt.outage = outage
    if outage:
        o.mark(POWER_DOWN)


async def close_overdue(mt, now_ms):
    """Intervals whose boundary passed while the MCU was not running. The front-end counted all
    along but only its total is known, so it is shared over them in proportion to time; they,
    and the interval now open (which starts from such an estimated reading), are flagged
    estimated, and power-down when the MCU had lost its power."""
    fe, fe_rx = mt.reading()
    o = mt.open
    start_ms = o.start_s * 1000
    span_ms = max(1, now_ms - start_ms)
    base, base_rx = o.frontend_mwh, o.frontend_rx_mwh
    total, total_rx = fe - base, fe_rx - base_rx
    extra = ESTIMATED | (POWER_DOWN if mt.outage else 0)
    flags = o.flags | extra
    n = 0
    while o.end_s * 1000 <= now_ms:
        end = o.end_s
        part_ms = end * 1000 - start_ms
        mt.close(end - o.start_s, flags, base + total * part_ms // span_ms, base_rx + total_rx * part_ms // span_ms,
                 now_ms, end, extra)
        flags = extra
        n += 1
        if n % _CATCH_UP_YIELD == 0:
            await asyncio.sleep_ms(0)
    o.save()
    _log(mt, event_codes.INTERVAL_GAP, n)
    mt.closed_now()


def front_end_restarted(mt, fe):
    """The front-end lost its own power, and what it counted before is gone: the open interval
    gets what it counted since, and says it is estimated."""
    _log(mt, event_codes.FRONTEND_RESTARTED, min(fe, 0x7FFFFFFF))
    if mt.alarm:
        mt.alarm(event_codes.FRONTEND_RESTARTED, fe, "metrology front-end restarted")
    o = mt.open
    o.frontend_mwh = o.frontend_rx_mwh = 0
    o.flags |= ESTIMATED
    o.save()
