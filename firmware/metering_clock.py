# Metering and the clock: whether the clock can be trusted, and what happens when it moves under
# the meter: set by an operator, or leapt further ahead than the interval log holds. Loaded for
# each (loader.py): the heap carries only the close path while the meter meters.
from micropython import const
import event_codes
from intervals import CLOCK_SET, PARTIAL, ESTIMATED, START

_VALID_FROM_S = const(1704067200)  # 2024-01-01


def valid(mt, now_s):
    """A clock that reads before 2024 lost its time; one behind the last interval went back."""
    last = mt.log.last
    return now_s >= _VALID_FROM_S and not (last and now_s < last[START])


def was_set(mt, old_ms, new_ms):
    """The clock was set from old_ms to new_ms. Within the open interval it is only flagged;
    otherwise the interval closes at the old time and one opens at the new (both partial).
    True if the interval was split."""
    o = mt.open
    new_s = new_ms // 1000
    if o.start_s <= new_s < o.end_s:
        o.mark(CLOCK_SET)
        return False
    fe, fe_rx = mt.reading()
    duration_s = min(max(0, old_ms // 1000 - o.start_s), 0xFFFF)
    mt.close(duration_s, o.flags | CLOCK_SET | PARTIAL, fe, fe_rx, old_ms, new_s, CLOCK_SET | PARTIAL)
    mt.late_ms.pop()  # not a boundary close: no lateness to speak of
    o.save()
    return True


def leapt(mt, now_ms):
    """Further ahead than the interval log holds: no outage shows in it as more than its quota,
    so this is a clock that jumped. Close once, flagged, and open at the new time."""
    o = mt.open
    if mt.events:
        mt.events.log(event_codes.CLOCK_INVALID, 2)
    if mt.alarm:
        mt.alarm(event_codes.CLOCK_INVALID, 2, "clock leapt ahead by %d s" % (now_ms // 1000 - o.end_s))
    fe, fe_rx = mt.reading()
    mt.close(o.end_s - o.start_s, o.flags | CLOCK_SET | ESTIMATED, fe, fe_rx, now_ms, now_ms // 1000,
             CLOCK_SET | PARTIAL | ESTIMATED)
    o.save()
    mt.closed_now()
