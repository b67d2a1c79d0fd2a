# Load limiting (the meter state's limit): an interval whose average power passes the limit is
# logged and alarmed, once per excursion. Loaded at a close while a limit is set or was passed
# (loader.py).
import event_codes


def check(mt, e_mwh, duration_s):
    """After a close of duration_s that delivered e_mwh. It never opens the relay: only an
    authenticated command does (FR2)."""
    limit_w = mt.state.limit_w() if mt.state else 0
    if not limit_w:
        mt.over_limit = False
        return
    if not duration_s:
        return  # a clock set's zero-length piece says nothing about the load
    avg_w = e_mwh * 36 // (10 * duration_s)  # mWh over s -> W
    over = avg_w > limit_w
    if over and not mt.over_limit:
        if mt.events:
            mt.events.log(event_codes.LOAD_LIMIT_EXCEEDED, avg_w)
        if mt.alarm:
            mt.alarm(event_codes.LOAD_LIMIT_EXCEEDED, avg_w, "load %d W over the %d W limit" % (avg_w, limit_w))
    mt.over_limit = over
