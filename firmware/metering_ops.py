# The metering operations that run seldom: a clock set or a clock that leapt, a front-end that
# restarted, a register reset, the pre-switch snapshot, load limiting. Part of metering.py (it
# works on a Metering's insides), loaded for each use and dropped after, so the heap carries
# only the close path while the meter meters.
import event_codes
from intervals import CLOCK_SET, PARTIAL, ESTIMATED, REGISTER_RESET, SEQ


def _wh(mwh):
    return max(-0x7FFFFFFF, min(0x7FFFFFFF, mwh // 1000))  # event values are i32


def _log(mt, code, value):
    if mt._events:
        mt._events.log(code, value)


def _alarm(mt, code, value, message):
    if mt.alarm:
        mt.alarm(code, value, message)


def check_limit(mt, e_mwh, duration_s):
    """Load limiting: an interval whose average power passes the limit is logged and alarmed,
    once per excursion. It never opens the relay: only an authenticated command does (FR2)."""
    limit_w = mt.state.limit_w() if mt.state else 0
    if not limit_w:
        mt.over_limit = False
        return
    if not duration_s:
        return  # a clock set's zero-length piece says nothing about the load
    avg_w = e_mwh * 36 // (10 * duration_s)  # mWh over s -> W
    over = avg_w > limit_w
    if over and not mt.over_limit:
        _log(mt, event_codes.LOAD_LIMIT_EXCEEDED, avg_w)
        _alarm(mt, event_codes.LOAD_LIMIT_EXCEEDED, avg_w, "load %d W over the %d W limit" % (avg_w, limit_w))
    mt.over_limit = over


def clock_leapt(mt, now_ms):
    """Further ahead than the interval log holds: no outage shows in it as more than its quota,
    so this is a clock that jumped. Close once, flagged, and open at the new time."""
    _log(mt, event_codes.CLOCK_INVALID, 2)
    _alarm(mt, event_codes.CLOCK_INVALID, 2, "clock leapt ahead by %d s" % (now_ms // 1000 - mt.open_end_s))
    fe, fe_rx = mt._reading()
    mt._record(mt.open_end_s - mt.open_start_s, mt.open_flags | CLOCK_SET | ESTIMATED, fe, fe_rx, now_ms)
    mt._set_open(now_ms // 1000, fe, fe_rx, mt.open_reg, mt.open_reg_rx, CLOCK_SET | PARTIAL | ESTIMATED)
    mt._save_open()
    mt.outage = False
    mt.closed.set()
    mt.closed.clear()


def clock_set(mt, old_ms, new_ms):
    """The clock was set from old_ms to new_ms. Within the open interval it is only flagged;
    otherwise the interval closes at the old time and one opens at the new (both partial)."""
    new_s = new_ms // 1000
    if mt.open_start_s <= new_s < mt.open_end_s:
        mt.mark(CLOCK_SET)
        return False
    fe, fe_rx = mt._reading()
    duration_s = min(max(0, old_ms // 1000 - mt.open_start_s), 0xFFFF)
    mt._record(duration_s, mt.open_flags | CLOCK_SET | PARTIAL, fe, fe_rx, old_ms)
    mt.late_ms.pop()  # not a boundary close: no lateness to speak of
    mt._set_open(new_s, fe, fe_rx, mt.open_reg, mt.open_reg_rx, CLOCK_SET | PARTIAL)
    mt._save_open()
    return True


def front_end_restarted(mt, fe):
    # The front-end lost its own power, and what it counted before is gone: the open interval
    # gets what it counted since, and says it is estimated.
    _log(mt, event_codes.FRONTEND_RESTARTED, min(fe, 0x7FFFFFFF))
    _alarm(mt, event_codes.FRONTEND_RESTARTED, fe, "metrology front-end restarted")
    mt.open_fe = mt.open_fe_rx = 0
    mt.open_flags |= ESTIMATED
    mt._save_open()


def reset_registers(mt, tag=None):
    """Reset both registers to zero, logging their values first (FR3). With a tag (the new
    image's id) it happens once: asking again with the same tag changes nothing. Returns the
    values before the reset, or None if this tag's reset was done already."""
    tag = bytes(tag[:16]) + bytes(16 - len(tag[:16])) if tag else bytes(16)
    if tag != bytes(16) and mt.resets and tag == mt.reset_tag:
        return None
    reg, reg_rx, _, _ = mt.registers()
    # Logged before the reset is stored: a power cut in between repeats the reset (and the log
    # entry) at the next request, but never resets without a record of what was there.
    _log(mt, event_codes.REGISTERS_RESET, _wh(reg))
    _log(mt, event_codes.REGISTERS_RESET_RECEIVED, _wh(reg_rx))
    mt.open_reg -= reg
    mt.open_reg_rx -= reg_rx
    mt.reset_mwh += reg
    mt.reset_rx_mwh += reg_rx
    mt.resets += 1
    mt.reset_tag = tag
    mt.open_flags |= REGISTER_RESET
    mt._save_open()  # registers and the reset's bookkeeping: one record, one write
    return {"delivered_mwh": reg, "received_mwh": reg_rx, "resets": mt.resets}


def pre_switch(mt, path=None):
    """The pre-switch snapshot (snapshot.py), just before the reset into another image."""
    import snapshot
    reg, reg_rx, fe, fe_rx = mt.registers()
    st = mt.state
    last = mt.log.last
    snapshot.save(mt._board.clock.time_ms() // 1000, last[SEQ] if last else 0, reg, reg_rx, fe, fe_rx,
                  mt.resets, st.seq if st else 0, st.hash_bytes() if st else bytes(32), path)
