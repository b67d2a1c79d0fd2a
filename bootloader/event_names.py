# Reading the event log out: a page of it for the link (READ_EVENTS), and the names of the
# platform's event codes (eventlog.py). Loaded for a read and forgotten after it (eventlog.py):
# none of it is on the heap while the meter meters.
from bootloader.eventlog import _PATHS, _read
from bootloader.protocol import field, query

NAMES = {
    17: "firmware ready for activation", 18: "firmware activated",
    51: "firmware verification failed", 100: "boot", 101: "trial attempt",
    102: "image confirmed", 103: "reverted", 104: "application crashed",
    105: "download started", 106: "download complete", 107: "boot control rebuilt",
    109: "recovery console opened", 110: "rejected image allowed again by operator",
    112: "revert target dropped: below the security floor",
    113: "bootloader on trial", 114: "bootloader confirmed", 115: "bootloader fell back",
}


def names(codes, default="event"):
    """{code: name} of the platform's codes among `codes`."""
    return {c: NAMES.get(c, default) for c in codes}


def read(log, since_seq=0, limit=50):
    """(seq, time, code, value) of the log's events from since_seq, oldest first."""
    out = []
    for path in (_PATHS[log.cur ^ 1], _PATHS[log.cur]):
        for seq, t, code, _, value in _read(path):
            if seq >= since_seq and len(out) < limit:
                out.append((seq, t, code, value))
    out.sort()
    return out


def page(log, request, most, named=None):
    """A page of the log: the events from the request's since_seq, at most its limit and `most`,
    the names of their codes (`named`: the application's names, which cover the platform's;
    else the platform's), and whether more follow."""
    q = query(request)
    limit = max(1, min(field(q, "limit", int, most), most))
    evs = read(log, field(q, "since_seq", int, 0), limit + 1)
    rows = evs[:limit]
    return {"fields": ("seq", "time", "code", "value"), "rows": rows, "names": (named or names)({e[2] for e in rows}),
            "more": len(evs) > limit}
