# Reading the interval log (intervals.py) out: the READ_INTERVALS command's pages, from a sequence
# number or a time. Loaded for a read and dropped after (loader.py): the log itself keeps resident
# only what the close path and the boot need.
from micropython import const
from bootloader.api import field, query
from intervals import START

FLAG_NAMES = ("power-down", "clock-set", "firmware-change", "partial", "estimated", "register-reset")
# A page small enough that a reply stays near 2 KiB: the host's frame limit, and the heap's.
_PAGE = const(20)
_PAGE_FIELDS = ("seq", "start", "duration_s", "flags", "energy_mwh", "received_mwh", "register_mwh",
                "register_received_mwh")


def flag_names(flags):
    return [n for i, n in enumerate(FLAG_NAMES) if flags & (1 << i)]


async def read_page(m, payload):
    """READ_INTERVALS: records from since_seq (and since_s), as rows rather than objects, so a
    page stays well inside one frame. `more` says whether records follow; the host pages on
    from the last seq it got."""
    q = query(payload)
    limit = max(1, min(field(q, "limit", int, _PAGE), _PAGE))
    log = m.metering.log
    recs, more = read(log, field(q, "since_seq", int, 0), limit, field(q, "since_s", int, 0))
    return {"fields": _PAGE_FIELDS, "flag_names": FLAG_NAMES, "more": more, "rows": [r[:8] for r in recs],
            "first_seq": log.segments[0] if log.segments else None}


def _first_start(log, first_seq):
    recs, _ = log.read_segment(first_seq, 0, 1)
    return recs[0][START] if recs else None


def read(log, since_seq=0, limit=16, since_s=0):
    """(records, more): up to `limit` records of `log` with seq >= since_seq and start >= since_s.

    A time bound skips whole segments whose successor starts no later than it, which is
    exact while records are in time order (a clock set backwards breaks that; the
    sequence bound is always exact).
    """
    segs = log.segments
    i = 0
    for k in range(len(segs)):
        if segs[k] <= since_seq:
            i = k
    if since_s:
        while i + 1 < len(segs):
            t = _first_start(log, segs[i + 1])
            if t is None or t > since_s:
                break
            i += 1
    out = []
    for n in segs[i:]:
        recs, _ = log.read_segment(n, since_seq, limit + 1 - len(out) if not since_s else 1 << 30)
        for r in recs:
            if r[START] >= since_s and len(out) <= limit:
                out.append(r)
        if len(out) > limit:
            break
    return out[:limit], len(out) > limit
