"""The MDMS's validation, estimation and editing (VEE) of a meter's interval data: pure functions
over interval records as Meter.read_intervals() returns them, with no database and no meter I/O.

One meter's read goes through it like this (FR18: corrupt or missing intervals are read again
before anything is estimated):

    first = validate(records, history=history, until_s=read_at_s)
    reread = [r for start_s, end_s in follow_up(first)
              for r in meter.read_intervals(since_s=start_s) if r["start"] < end_s]
    merged = merge_reads(records, reread, first)
    found = validate(merged.records, history=history, until_s=read_at_s)
    result = estimate(merged.records, found, history=history)
    rows = exception_rows(serial, [*first, *found], result, reread=merged.taken)

The rules follow California's DASMMD VEE and Ontario's MDM/R (shared/ANCHORS.md): gaps up to two
hours are interpolated linearly, never from a power-down or partial interval; longer ones take
the average of like days (weekdays with weekdays, weekends and holidays with weekends). Where good
registers bracket a gap, the estimates are scaled so that their sum is the register delta across
it (Rules.honour_registers, on by default: the meter's registers are exact, so energy is
conserved), and a gap neither method can fill is shared out by time from that delta
(`register_prorate`, as the meter itself shares an outage). Every threshold is a named parameter
of Rules; the interval length always comes from the data.

Severity: a finding is an `error` when its rule is in Rules.error_rules (the interval is re-read,
then estimated), and for `review` otherwise. A few findings are for review whatever the rule,
because the data explains itself: an identical second copy, an off-grid start the meter flagged
as a clock set or partial interval, a register that alone disagrees with the energies around it,
and a spike that the registers either side confirm.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timezone
from typing import Any

from .errors import CommandError

# The rules' stable names, in the order findings and exception rows list them.
RULES = ("gap", "duplicate", "time_tolerance", "sum_check", "spike", "high", "low", "zero_consumption",
         "status_flag")
ERROR, REVIEW = "error", "review"

# The status flags as the meter names them (firmware/interval_reads.py FLAG_NAMES, in bit order).
POWER_DOWN, CLOCK_SET, FIRMWARE_CHANGE = "power-down", "clock-set", "firmware-change"
PARTIAL, ESTIMATED, REGISTER_RESET = "partial", "estimated", "register-reset"
STATUS_FLAGS = (POWER_DOWN, CLOCK_SET, FIRMWARE_CHANGE, PARTIAL, ESTIMATED, REGISTER_RESET)
# Intervals that are no baseline: history statistics and like days leave them out.
_UNREPRESENTATIVE = frozenset({POWER_DOWN, PARTIAL, ESTIMATED})
# An interpolation endpoint must be a whole interval the meter was powered for (DASMMD).
_NO_ENDPOINT = frozenset({POWER_DOWN, PARTIAL})

INTERPOLATION, LIKE_DAY, REGISTER_PRORATE = "interpolation", "like_day", "register_prorate"
_CHANNELS = (("energy_mwh", "register_mwh"), ("received_mwh", "register_received_mwh"))
_DAY_S = 86400
_W_PER_MWH_PER_S = 3.6  # 1 mWh each second is 3.6 J/s
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(frozen=True)
class Rules:
    """Every threshold of validation and estimation, with defaults for a residential meter.
    Powers are average watts over an interval, so they hold for any interval length."""

    time_tolerance_s: int = 0  # how far off the interval grid a start may be (this meter: exact)
    sum_tolerance_mwh: int = 0  # interval energy vs register delta (this meter: exact in mWh)
    spike_factor: float = 10.0  # a spike is this many times the larger neighbour...
    spike_min_w: float = 500.0  # ...and at least this much
    high_factor: float = 2.0  # high: above the history's largest interval times this
    low_factor: float = 0.25  # low: below the least at that time of day in the history times this
    min_history_days: int = 7  # days of history before high, low and zero_consumption can fire
    zero_run_s: int = _DAY_S  # zero_consumption: a run of zero intervals longer than this...
    active_w: float = 10.0  # ...on a meter whose history averaged at least this
    max_interpolation_s: int = 7200  # the longest gap filled by linear interpolation
    like_days: int = 3  # like-day estimates average the most recent this many like days...
    min_like_days: int = 1  # ...and need at least this many
    honour_registers: bool = True  # scale estimates to the register delta across a bracketed gap
    utc_offset_s: int = 0  # the meter's local time, for days and times of day (no DST)
    holidays: frozenset[date] = frozenset()  # local dates estimated like weekends
    error_rules: frozenset[str] = frozenset({"gap", "duplicate", "time_tolerance", "sum_check", "spike"})

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                               or not math.isfinite(value)):
                raise CommandError(f"VEE rule {f.name} must be a number, not {value!r}")
            if f.type in ("int", "float") and value < 0 and f.name != "utc_offset_s":
                raise CommandError(f"VEE rule {f.name} must be 0 or more, not {value!r}")
        if not isinstance(self.honour_registers, bool):
            raise CommandError(f"VEE rule honour_registers must be true or false, not {self.honour_registers!r}")
        if not all(isinstance(d, date) for d in self.holidays):
            raise CommandError("VEE rule holidays must hold dates")
        unknown = sorted(set(self.error_rules) - set(RULES))
        if unknown:
            raise CommandError(f"VEE error_rules names unknown rules {', '.join(unknown)}; rules: {', '.join(RULES)}")

    def severity(self, rule: str) -> str:
        return ERROR if rule in self.error_rules else REVIEW


@dataclass(frozen=True)
class Finding:
    """One rule that fired for one interval: seq is None for an interval with no record. end
    closes the interval concerned (start plus its length): what a follow-up read covers."""

    start: int
    seq: int | None
    rule: str
    detail: str
    severity: str
    end: int


@dataclass(frozen=True)
class Edit:
    """The audit trail of one estimated interval: what was there (None for a missing one), the
    rule or rules that made it an error, the estimate that replaced it and how it was made."""

    start: int
    seq: int | None
    rule: str
    original: dict | None
    estimate: dict
    method: str  # interpolation, like_day or register_prorate
    register_fit: bool  # scaled so the gap's estimates sum to the register delta across it
    detail: str


@dataclass(frozen=True)
class Unresolved:
    """An interval that needed an estimate and got none: it is left out of the series."""

    start: int
    seq: int | None
    rule: str
    original: dict | None
    reason: str


@dataclass(frozen=True)
class Estimated:
    records: list[dict]  # the edited series: one record per expected start, in time order
    edits: list[Edit] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)


@dataclass(frozen=True)
class Reread:
    """A record a follow-up read supplied in place of a missing or corrupt one."""

    start: int
    seq: int | None
    rule: str
    original: dict | None
    record: dict


@dataclass(frozen=True)
class Merged:
    records: list[dict]
    taken: list[Reread] = field(default_factory=list)


# --- records ---------------------------------------------------------------------------------------

def _checked(records: Iterable, what: str) -> list[dict]:
    """The records as a list, each checked for the fields VEE reads; a bad one is a clear error.
    seq and the registers may be None (an estimated record from an earlier run, kept as history)."""
    out = list(records)
    for i, r in enumerate(out):
        if not isinstance(r, Mapping):
            raise CommandError(f"{what} {i} is {type(r).__name__}, not an interval record")
        for name, optional in (("start", False), ("duration_s", False), ("energy_mwh", False), ("seq", True),
                               ("received_mwh", True), ("register_mwh", True)):
            v = r.get(name)
            if not (isinstance(v, int) and not isinstance(v, bool) or optional and v is None):
                raise CommandError(f"{what} {i} (seq {r.get('seq')}): {name} is {v!r}, not an integer")
        if r["duration_s"] <= 0:
            raise CommandError(f"{what} {i} (seq {r.get('seq')}): duration_s is {r['duration_s']}, not above 0")
        flags = r.get("flags", [])
        if not isinstance(flags, (list, tuple)) or not all(isinstance(f, str) for f in flags):
            raise CommandError(f"{what} {i} (seq {r.get('seq')}): flags is {flags!r}, not a list of names")
    return out


def _flags(r: Mapping) -> frozenset[str]:
    # The meter says power-down; accept power_down as well, so a spelling never hides a flag.
    return frozenset(f.replace("_", "-") for f in r.get("flags", ()))


def _watts(r: Mapping, name: str = "energy_mwh") -> float:
    return r[name] * _W_PER_MWH_PER_S / r["duration_s"]


def _same(a: Mapping, b: Mapping) -> bool:
    keys = ("seq", "start", "duration_s", "energy_mwh", "received_mwh", "register_mwh")
    return all(a.get(k) == b.get(k) for k in keys) and _flags(a) == _flags(b)


def _at(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _interval_s(records: list[dict], history: list[dict]) -> int:
    """The meter's interval length: the commonest length of its whole intervals."""
    for pool in ([r for r in records if PARTIAL not in _flags(r)], records, history):
        if pool:
            return Counter(r["duration_s"] for r in pool).most_common(1)[0][0]
    raise CommandError("no interval records to take the interval length from")


class _Series:
    """Records placed on the interval grid: each in the slot its start falls in (the nearest
    grid point when within the time tolerance)."""

    def __init__(self, records: list[dict], history: list[dict], rules: Rules):
        self.rules = rules
        self.interval_s = _interval_s(records, history)
        self.by_slot: dict[int, list[dict]] = {}
        for r in records:
            self.by_slot.setdefault(self.slot(r["start"]), []).append(r)
        self.first = min(self.by_slot, default=0)
        self.last = max(self.by_slot, default=0)

    def slot(self, start: int) -> int:
        iv, off = self.interval_s, start % self.interval_s
        if off and iv - off <= self.rules.time_tolerance_s:
            return start - off + iv
        return start - off

    def off_grid_s(self, start: int) -> int:
        off = start % self.interval_s
        return min(off, self.interval_s - off)

    def single(self, slot: int) -> dict | None:
        """The slot's record, unless it has none or conflicting copies."""
        rs = self.by_slot.get(slot)
        if not rs or any(not _same(rs[0], r) for r in rs[1:]):
            return None
        return rs[0]

    def ordered(self) -> Iterator[tuple[int, dict]]:
        for slot in sorted(self.by_slot):
            r = self.single(slot)
            if r is not None:
                yield slot, r

    def day(self, t: int) -> int:
        return (t + self.rules.utc_offset_s) // _DAY_S

    def time_of_day(self, t: int) -> int:
        return (t + self.rules.utc_offset_s) % _DAY_S // self.interval_s

    def weekend(self, day: int) -> bool:
        return (day + 3) % 7 >= 5 or date.fromordinal(day + _EPOCH_ORDINAL) in self.rules.holidays


def _finding(s: _Series, rule: str, r: Mapping | None, detail: str, *, start: int | None = None,
             severity: str | None = None) -> Finding:
    if r is None:
        assert start is not None
        return Finding(start, None, rule, detail, severity or s.rules.severity(rule), start + s.interval_s)
    return Finding(r["start"], r.get("seq"), rule, detail, severity or s.rules.severity(rule),
                   r["start"] + r["duration_s"])


# --- validation: one small function per rule -------------------------------------------------------

def check_gap(s: _Series, until_s: int | None) -> Iterator[Finding]:
    """Every expected interval between the first and the last record (or, with until_s, every
    one that should have closed by until_s) that has no record."""
    end = s.last + s.interval_s if until_s is None else max(s.last + s.interval_s, until_s)
    for slot in range(s.first, end - s.interval_s + 1, s.interval_s):
        if slot not in s.by_slot:
            yield _finding(s, "gap", None, f"no record for the interval from {_at(slot)}", start=slot)


def check_duplicate(s: _Series) -> Iterator[Finding]:
    """Two records for one interval: an identical copy is harmless, a conflicting one is not."""
    for slot in sorted(s.by_slot):
        first, *others = s.by_slot[slot]
        for r in others:
            if _same(first, r):
                yield _finding(s, "duplicate", r, f"a second identical copy of seq {first.get('seq')}; one is kept",
                               severity=REVIEW)
            else:
                yield _finding(s, "duplicate", r, f"conflicts with seq {first.get('seq')} for the interval from "
                               f"{_at(slot)}: {r['energy_mwh']} mWh against {first['energy_mwh']} mWh")


def check_time_tolerance(s: _Series, records: list[dict]) -> Iterator[Finding]:
    """A start off the grid by more than the tolerance, or a record that starts before the one
    read before it has ended (the meter's clock went back; an off-grid record's own overlap is
    already its finding)."""
    tol = s.rules.time_tolerance_s
    for r in records:
        off = s.off_grid_s(r["start"])
        if off > tol:
            explained = _flags(r) & {CLOCK_SET, PARTIAL}
            yield _finding(s, "time_tolerance", r, f"starts {off} s off the {s.interval_s} s grid (tolerance {tol} s)"
                           + (f"; the meter flagged it {', '.join(sorted(explained))}" if explained else ""),
                           severity=REVIEW if explained else None)
    in_seq = sorted((r for r in records if r.get("seq") is not None), key=lambda r: r["seq"])
    for prev, r in zip(in_seq, in_seq[1:]):
        if (r["seq"] != prev["seq"] and r["start"] < prev["start"] + prev["duration_s"] - tol
                and s.off_grid_s(prev["start"]) <= tol):
            yield _finding(s, "time_tolerance", r, f"starts at {_at(r['start'])}, before seq {prev['seq']} "
                           f"(from {_at(prev['start'])}) ended: out of order")


def _register_mismatches(s: _Series, history: list[dict]) -> dict[int, int]:
    """For each slot whose record and whose predecessor's both carry a register: the register's
    move less the interval's energy (0 when they agree). A register reset breaks the chain."""
    before = {s.slot(h["start"]): h for h in history}
    out = {}
    for slot, r in s.ordered():
        p = s.single(slot - s.interval_s) if slot - s.interval_s in s.by_slot else before.get(slot - s.interval_s)
        if p is None or r.get("register_mwh") is None or p.get("register_mwh") is None or REGISTER_RESET in _flags(r):
            continue
        out[slot] = r["register_mwh"] - p["register_mwh"] - r["energy_mwh"]
    return out


def check_sum_check(s: _Series, history: list[dict]) -> Iterator[Finding]:
    """Each interval's energy against the move of the register over it. When two neighbours fail
    by opposite amounts and agree together, it is the register between them that is off, not the
    energies: that one is for review."""
    tol = s.rules.sum_tolerance_mwh
    miss = _register_mismatches(s, history)
    skip = None
    for slot in sorted(miss):
        m = miss[slot]
        if slot == skip or abs(m) <= tol:
            continue
        r = s.by_slot[slot][0]
        after = miss.get(slot + s.interval_s)
        if after is not None and abs(after) > tol and abs(m + after) <= tol:
            skip = slot + s.interval_s
            yield _finding(s, "sum_check", r, f"register_mwh at its close is off by {m} mWh: the energies either "
                           "side agree with the registers around it", severity=REVIEW)
        else:
            yield _finding(s, "sum_check", r, f"{r['energy_mwh']} mWh, but the register moved "
                           f"{r['energy_mwh'] + m} mWh over it (tolerance {tol} mWh)")


def check_spike(s: _Series, history: list[dict]) -> Iterator[Finding]:
    """One interval far above both neighbours. Registers that agree with it on both sides say it
    was real (on this meter they are exact), so then it is for review only."""
    rules = s.rules
    miss = _register_mismatches(s, history)
    iv = s.interval_s
    for slot, r in s.ordered():
        left, right = s.single(slot - iv), s.single(slot + iv)
        if left is None or right is None:
            continue
        w, w_left, w_right = _watts(r), _watts(left), _watts(right)
        if w >= rules.spike_min_w and w > rules.spike_factor * max(w_left, w_right):
            confirmed = slot in miss and abs(miss[slot]) <= rules.sum_tolerance_mwh
            yield _finding(s, "spike", r, f"{w:.0f} W against {w_left:.0f} W and {w_right:.0f} W either side"
                           + ("; the registers confirm it" if confirmed else ""),
                           severity=REVIEW if confirmed else None)


def _baseline(s: _Series, history: list[dict]) -> tuple[list[dict], int]:
    """The history's representative intervals, and how many days they cover."""
    base = [h for h in history if not _flags(h) & _UNREPRESENTATIVE]
    return base, len({s.day(h["start"]) for h in base})


def check_high(s: _Series, records: list[dict], history: list[dict]) -> Iterator[Finding]:
    """Above the largest interval of the meter's history times high_factor."""
    base, days = _baseline(s, history)
    if days < s.rules.min_history_days:
        return
    peak = max(_watts(h) for h in base)
    for r in records:
        if peak > 0 and _watts(r) > s.rules.high_factor * peak:
            yield _finding(s, "high", r, f"{_watts(r):.0f} W, above {s.rules.high_factor} times the history's "
                           f"largest interval ({peak:.0f} W over {days} days)")


def check_low(s: _Series, records: list[dict], history: list[dict]) -> Iterator[Finding]:
    """Below low_factor times the least the meter used at that time of day in its history. A
    power-down or partial interval is low for a known reason."""
    base, days = _baseline(s, history)
    if days < s.rules.min_history_days:
        return
    least: dict[int, list[float]] = {}
    for h in base:
        least.setdefault(s.time_of_day(h["start"]), []).append(_watts(h))
    for r in records:
        like = least.get(s.time_of_day(r["start"]), [])
        floor = min(like, default=0.0)
        if (len(like) >= s.rules.min_history_days and floor > 0 and not _flags(r) & _NO_ENDPOINT
                and _watts(r) < s.rules.low_factor * floor):
            yield _finding(s, "low", r, f"{_watts(r):.0f} W, below {s.rules.low_factor} times the least at this "
                           f"time of day in {len(like)} days of history ({floor:.0f} W)")


def check_zero_consumption(s: _Series, history: list[dict]) -> Iterator[Finding]:
    """A run of zero intervals longer than zero_run_s on a meter whose history shows it in use;
    one finding, at the run's first interval."""
    base, days = _baseline(s, history)
    if days < s.rules.min_history_days:
        return
    average_w = sum(h["energy_mwh"] for h in base) * _W_PER_MWH_PER_S / sum(h["duration_s"] for h in base)
    if average_w < s.rules.active_w:
        return
    run: list[dict] = []
    for slot, r in [*s.ordered(), (None, None)]:
        if r is not None and r["energy_mwh"] == 0 and (not run or s.slot(run[-1]["start"]) + s.interval_s == slot):
            run.append(r)
            continue
        length_s = sum(z["duration_s"] for z in run)
        if length_s > s.rules.zero_run_s:
            yield _finding(s, "zero_consumption", run[0], f"{len(run)} zero intervals ({length_s} s) from "
                           f"{_at(run[0]['start'])} on a meter that averaged {average_w:.0f} W")
        run = [r] if r is not None and r["energy_mwh"] == 0 else []


def check_status_flag(s: _Series, records: list[dict]) -> Iterator[Finding]:
    """Intervals the meter flagged, for review: not errors on their own, but a power-down or
    partial interval is never an interpolation endpoint nor a baseline."""
    for r in records:
        flagged = [f for f in STATUS_FLAGS if f in _flags(r)]
        if flagged:
            yield _finding(s, "status_flag", r, "flagged " + ", ".join(flagged))


def validate(records: Iterable[Mapping], *, history: Iterable[Mapping] = (), rules: Rules = Rules(),
             until_s: int | None = None) -> list[Finding]:
    """Every rule over one meter's records (history: earlier, validated records of the same meter),
    as findings in time order."""
    recs, hist = _checked(records, "interval record"), _checked(history, "history record")
    if until_s is not None and (isinstance(until_s, bool) or not isinstance(until_s, int)):
        raise CommandError(f"until_s is {until_s!r}, not epoch seconds")
    if not recs:
        return []
    s = _Series(recs, hist, rules)
    found = [*check_gap(s, until_s), *check_duplicate(s), *check_time_tolerance(s, recs),
             *check_sum_check(s, hist), *check_spike(s, hist), *check_high(s, recs, hist),
             *check_low(s, recs, hist), *check_zero_consumption(s, hist), *check_status_flag(s, recs)]
    return sorted(found, key=lambda f: (f.start, RULES.index(f.rule), -1 if f.seq is None else f.seq))


# --- estimation ------------------------------------------------------------------------------------

class _LikeDays:
    """Representative intervals by (weekend or not, time of day): what like-day estimates average."""

    def __init__(self, s: _Series, records: Iterable[dict]):
        self.s = s
        by_kind: dict[tuple[bool, int], dict[int, dict]] = {}
        for r in records:
            if not _flags(r) & _UNREPRESENTATIVE:
                day = s.day(r["start"])
                by_kind.setdefault((s.weekend(day), s.time_of_day(r["start"])), {}).setdefault(day, r)
        self.by_kind = {kind: sorted(days.items()) for kind, days in by_kind.items()}

    def days(self, slot: int) -> list[tuple[int, dict]]:
        """The most recent like days before the slot's own that have a record at its time of day."""
        day = self.s.day(slot)
        found = [d for d in self.by_kind.get((self.s.weekend(day), self.s.time_of_day(slot)), []) if d[0] < day]
        return found[-self.s.rules.like_days:] if self.s.rules.like_days else []


def _apportion(total: int, weights: list[float]) -> list[int]:
    """total in whole mWh, shared in proportion to weights, summing to total exactly."""
    whole = sum(weights)
    raw = [total * w / whole for w in weights]
    out = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: out[i] - raw[i])
    for i in by_remainder[:total - sum(out)]:
        out[i] += 1
    return out


def _bracket(left: dict | None, right: dict | None, originals: list[dict | None], energy: str,
             register: str) -> int | None:
    """The channel's energy across the gap from the registers around it, or None when they do
    not bracket it: the register at the right record's open less the one at the left's close."""
    if left is None or right is None or REGISTER_RESET in _flags(right):
        return None
    if any(o is not None and REGISTER_RESET in _flags(o) for o in originals):
        return None
    if left.get(register) is None or right.get(register) is None or right.get(energy) is None:
        return None
    total = right[register] - right[energy] - left[register]
    return total if total >= 0 else None


def _fill_hole(s: _Series, hole: list[int], kept: dict[int, dict], like: _LikeDays,
               why: dict[int, str]) -> tuple[list[Edit], list[Unresolved]]:
    rules, iv = s.rules, s.interval_s
    left, right = kept.get(hole[0] - iv), kept.get(hole[-1] + iv)
    originals = [s.by_slot.get(slot, [None])[0] for slot in hole]
    durations = [o["duration_s"] if o is not None and o["start"] == slot else iv for slot, o in zip(hole, originals)]
    totals = {e: _bracket(left, right, originals, e, reg) if rules.honour_registers else None for e, reg in _CHANNELS}
    like_days = [like.days(slot) for slot in hole]

    if (left is not None and right is not None and not (_flags(left) | _flags(right)) & _NO_ENDPOINT
            and len(hole) * iv <= rules.max_interpolation_s):
        method = INTERPOLATION
        detail = (f"linear between seq {left.get('seq')} ({left['energy_mwh']} mWh) and seq {right.get('seq')} "
                  f"({right['energy_mwh']} mWh)")
    elif all(len(days) >= max(1, rules.min_like_days) for days in like_days):
        method = LIKE_DAY
        used = sorted({d for days in like_days for d, _ in days})
        detail = "average of like days " + ", ".join(date.fromordinal(d + _EPOCH_ORDINAL).isoformat() for d in used)
    elif totals["energy_mwh"] is not None:
        method = REGISTER_PRORATE
        detail = f"the register moved {totals['energy_mwh']} mWh across the gap; shared by time"
    else:
        reason = _why_not(s, hole, left, right, like_days)
        return [], [Unresolved(slot, o.get("seq") if o else None, why[slot], o, reason)
                    for slot, o in zip(hole, originals)]

    values: dict[str, list[int | None]] = {}
    for e, _ in _CHANNELS:
        shape: list[float] | None = None  # the estimates' shape, before any scaling to the registers
        if method == INTERPOLATION:
            if left is None or right is None or left.get(e) is None or right.get(e) is None:
                shape = None
            else:
                w_left, w_right = left[e] / left["duration_s"], right[e] / right["duration_s"]
                n = len(hole) + 1
                shape = [max(0.0, w_left + (w_right - w_left) * k / n) * d for k, d in enumerate(durations, 1)]
        elif method == LIKE_DAY:
            shape = [sum(r[e] / r["duration_s"] for _, r in days) / len(days) * d
                     if all(r.get(e) is not None for _, r in days) else math.nan
                     for days, d in zip(like_days, durations)]
            shape = None if any(math.isnan(x) for x in shape) else shape
        total = totals[e]
        if total is not None:  # register_prorate's shape is time alone, as is a shape of all zeros
            weights = shape if shape is not None and sum(shape) > 0 else [float(d) for d in durations]
            values[e] = list(_apportion(total, weights))
        else:
            values[e] = [None] * len(hole) if shape is None else [round(x) for x in shape]
    fit = totals.get("energy_mwh") is not None
    if fit and method != REGISTER_PRORATE:
        detail += f"; scaled to the register's move of {totals['energy_mwh']} mWh"

    edits = []
    registers = {reg: left.get(reg) if left is not None else None for _, reg in _CHANNELS}
    for k, (slot, o) in enumerate(zip(hole, originals)):
        est: dict = {"seq": o.get("seq") if o else None, "start": slot, "duration_s": durations[k]}
        for e, reg in _CHANNELS:
            v = values[e][k]
            est[e] = v
            before = registers[reg]
            registers[reg] = None if v is None or before is None else before + v
            if reg == "register_mwh" or any(reg in r for r in (o, left, right) if r is not None):
                est[reg] = registers[reg]
        flags = (_flags(o) if o else frozenset()) | {ESTIMATED}
        est["flags"] = [f for f in STATUS_FLAGS if f in flags] + sorted(flags - set(STATUS_FLAGS))
        est["energy_wh"] = est["energy_mwh"] / 1000
        edits.append(Edit(slot, est["seq"], why[slot], o, est, method, fit, detail))
    return edits, []


def _why_not(s: _Series, hole: list[int], left: dict | None, right: dict | None,
             like_days: list[list]) -> str:
    iv, rules = s.interval_s, s.rules
    if left is None or right is None:
        interpolation = "no good interval on both sides"
    elif (_flags(left) | _flags(right)) & _NO_ENDPOINT:
        interpolation = "a power-down or partial interval beside it"
    else:
        interpolation = f"{len(hole) * iv} s long, over {rules.max_interpolation_s} s"
    lacking = sum(len(days) < max(1, rules.min_like_days) for days in like_days)
    registers = "not used" if not rules.honour_registers else "no good registers on both sides"
    return (f"no interpolation ({interpolation}), no like days for {lacking} of its {len(hole)} intervals, "
            f"register prorate {registers}")


def estimate(records: Iterable[Mapping], findings: Iterable[Finding], *, history: Iterable[Mapping] = (),
             rules: Rules = Rules()) -> Estimated:
    """The series with every gap filled and every interval that failed an error rule replaced,
    where it can be; the edits that did it, and what was left missing. findings are validate()'s
    for these same records (after any re-read)."""
    recs, hist = _checked(records, "interval record"), _checked(history, "history record")
    if not recs:
        return Estimated([])
    s = _Series(recs, hist, rules)
    iv = s.interval_s
    fired: dict[int, list[str]] = {}
    for f in findings:
        if f.severity == ERROR:
            rules_fired = fired.setdefault(s.slot(f.start), [])
            if f.rule not in rules_fired:
                rules_fired.append(f.rule)
    first, last = min([s.first, *fired]), max([s.last, *fired])
    kept: dict[int, dict] = {}
    why: dict[int, str] = {}
    for slot in range(first, last + iv, iv):
        if slot in fired or slot not in s.by_slot:
            why[slot] = ", ".join(sorted(fired.get(slot, ["gap"]), key=RULES.index))
        else:
            kept[slot] = s.by_slot[slot][0]
    like = _LikeDays(s, [*hist, *kept.values()])
    edits: list[Edit] = []
    unresolved: list[Unresolved] = []
    holes: list[list[int]] = []
    for slot in sorted(why):
        if holes and slot == holes[-1][-1] + iv:
            holes[-1].append(slot)
        else:
            holes.append([slot])
    for hole in holes:
        done, left_out = _fill_hole(s, hole, kept, like, why)
        edits += done
        unresolved += left_out
    series = {**kept, **{e.start: e.estimate for e in edits}}
    return Estimated([series[slot] for slot in sorted(series)], edits, unresolved)


# --- follow-up reads (FR18) ------------------------------------------------------------------------

def follow_up(findings: Iterable[Finding]) -> list[tuple[int, int]]:
    """The time ranges [start_s, end_s) to read from the meter again: every interval an error
    finding concerns, merged where they touch or overlap."""
    ranges: list[tuple[int, int]] = []
    for start, end in sorted((f.start, f.end) for f in findings if f.severity == ERROR):
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges


def merge_reads(records: Iterable[Mapping], reread: Iterable[Mapping], findings: Iterable[Finding] | None = None,
                *, rules: Rules = Rules()) -> Merged:
    """The records with a follow-up read's records in place of the missing or corrupt ones that
    findings (by default, validate(records)) name; other re-read records are not asked for and
    are left out. A re-read record identical to the one there changes nothing and is not taken.
    Returns the records in sequence order and what was taken."""
    recs, again = _checked(records, "interval record"), _checked(reread, "re-read record")
    if not recs and not again:
        return Merged([])
    if findings is None:
        findings = validate(recs, rules=rules)
    s = _Series(recs or again, [], rules)
    fired: dict[int, list[str]] = {}
    for f in findings:
        if f.severity == ERROR:
            fired.setdefault(s.slot(f.start), []).append(f.rule)
    fresh: dict[int, list[dict]] = {}
    for r in again:
        fresh.setdefault(s.slot(r["start"]), []).append(r)
    by_slot = {slot: list(rs) for slot, rs in s.by_slot.items()} if recs else {}
    taken = []
    for slot in sorted(fired.keys() & fresh.keys()):
        before = by_slot.get(slot, [])
        if len(before) == len(fresh[slot]) and all(_same(a, b) for a, b in zip(before, fresh[slot])):
            continue
        by_slot[slot] = fresh[slot]
        rule = ", ".join(sorted(set(fired[slot]), key=RULES.index))
        taken.append(Reread(slot, fresh[slot][0].get("seq"), rule, before[0] if before else None, fresh[slot][0]))
    out = [r for rs in by_slot.values() for r in rs]
    out.sort(key=lambda r: (r.get("seq") is None, r.get("seq") or 0, r["start"]))
    return Merged(out, taken)


# --- the exception report --------------------------------------------------------------------------

def _lookup(items: list, seq_of: Callable) -> Callable[[Finding], Any]:
    """What concerns a finding's record (by its seq), or else its interval (by its start)."""
    by_seq = {seq_of(i): i for i in items if seq_of(i) is not None}
    by_start = {i.start: i for i in items}
    return lambda f: by_seq[f.seq] if f.seq is not None and f.seq in by_seq else by_start.get(f.start)


def exception_rows(meter_serial: str, findings: Iterable[Finding], estimated: Estimated, *,
                   reread: Iterable[Reread] = ()) -> list[dict]:
    """One row per meter, interval and rule, saying what was done: `re-read`, `estimated by
    <method>`, `left missing` or `for review` (`unchanged`: an error that nothing here acted on)."""
    edits = _lookup(estimated.edits, lambda e: e.seq)
    missing = _lookup(estimated.unresolved, lambda u: u.seq)
    taken = _lookup(list(reread), lambda t: t.original.get("seq") if t.original else None)
    rows: dict[tuple[int, str], dict] = {}
    for f in sorted(findings, key=lambda f: (f.start, RULES.index(f.rule))):
        key = (f.start, f.rule)
        if key in rows:  # another copy, or the same finding from before and after a re-read
            if f.detail not in rows[key]["detail"]:
                rows[key]["detail"] += "; " + f.detail
            continue
        edit, left_out, again = edits(f), missing(f), taken(f)
        if edit is not None:
            action = f"estimated by {edit.method}"
        elif left_out is not None:
            action = "left missing"
        elif again is not None:
            action = "re-read"
        elif f.severity == REVIEW:
            action = "for review"
        else:
            action = "unchanged"
        original = edit.original if edit else left_out.original if left_out else again.original if again else None
        rows[key] = {"meter": meter_serial, "start": f.start, "end": f.end, "seq": f.seq, "rule": f.rule,
                     "severity": f.severity, "detail": f.detail, "action": action, "re_read": again is not None,
                     "method": edit.method if edit else None, "register_fit": edit.register_fit if edit else False,
                     "original_mwh": original["energy_mwh"] if original else None,
                     "estimate_mwh": edit.estimate["energy_mwh"] if edit else None}
    return list(rows.values())
