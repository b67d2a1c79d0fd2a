"""The MDMS's VEE (meterfw.vee): each validation rule fires on data that breaks it and stays quiet
on data that does not; estimation interpolates short gaps (never from a power-down interval),
averages like days beyond two hours, honours the registers, and keeps an audit trail; follow-up
reads and the exception report. Records are generated as the meter sends them."""
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterfw.errors import CommandError
from meterfw.vee import (ERROR, REVIEW, Finding, Rules, estimate, exception_rows, follow_up, merge_reads,
                         validate)

DAY_S = 86400
IV = 900
MONDAY = 1767571200  # 2026-01-05 00:00 UTC


def series(energies, *, start=MONDAY, interval_s=IV, register_mwh=5_000_000, first_seq=1, flags=None):
    """One record per interval from start, as Meter.read_intervals() gives them: the delivered
    register moves by each interval's energy."""
    out = []
    for i, e in enumerate(energies):
        register_mwh += e
        out.append({"seq": first_seq + i, "start": start + i * interval_s, "duration_s": interval_s,
                    "energy_mwh": e, "received_mwh": 0, "register_mwh": register_mwh,
                    "register_received_mwh": 0, "flags": list((flags or {}).get(i, [])), "energy_wh": e / 1000})
    return out


def load(i, level=100_000):
    """A day's shape in mWh per 15 minutes (400 W by night, 560 W by day), never zero."""
    return level + (40_000 if 28 <= i % 96 < 80 else 0) + 1000 * (i % 5)


def day(start=MONDAY, level=100_000, **kw):
    return series([load(i, level) for i in range(DAY_S // IV)], start=start, **kw)


def history(days=7, end=MONDAY, weekend_level=100_000):
    """The days before `end`, weekends at their own level, as one run of records whose register
    ends where day()'s begins."""
    energies = []
    for d in range(days):
        weekend = (end - (days - d) * DAY_S) // DAY_S % 7 in (2, 3)  # epoch day 0 is a Thursday
        energies += [load(i, weekend_level if weekend else 100_000) for i in range(DAY_S // IV)]
    return series(energies, start=end - days * DAY_S, register_mwh=5_000_000 - sum(energies), first_seq=1)


def without(records, *indexes):
    return [r for i, r in enumerate(records) if i not in indexes]


def rules_fired(findings, rule):
    return [f for f in findings if f.rule == rule]


# --- validation ------------------------------------------------------------------------------------

def test_no_finding_at_all_in_a_complete_day():
    assert validate(day(), history=history()) == []


def test_gap_found_when_an_interval_is_missing():
    recs = without(day(), 10, 11)
    gaps = rules_fired(validate(recs), "gap")
    assert [(f.start, f.seq, f.severity, f.end) for f in gaps] == [
        (MONDAY + 10 * IV, None, ERROR, MONDAY + 11 * IV), (MONDAY + 11 * IV, None, ERROR, MONDAY + 12 * IV)]


def test_no_gap_in_a_complete_day():
    assert rules_fired(validate(day()), "gap") == []


def test_gap_reaches_until_s_past_the_last_record():
    recs = day()[:90]
    gaps = rules_fired(validate(recs, until_s=MONDAY + DAY_S), "gap")
    assert [f.start for f in gaps] == [MONDAY + i * IV for i in range(90, 96)]
    # The interval still open at until_s is not expected yet.
    assert len(rules_fired(validate(recs, until_s=MONDAY + 91 * IV - 1), "gap")) == 0


def test_gaps_take_the_interval_length_from_the_data():
    recs = without(series([100] * 30, interval_s=10), 7)
    assert [f.start for f in rules_fired(validate(recs), "gap")] == [MONDAY + 70]


def test_duplicate_that_conflicts_is_an_error():
    recs = day()
    other = dict(recs[20], seq=200, energy_mwh=recs[20]["energy_mwh"] + 5)
    found = rules_fired(validate(recs + [other]), "duplicate")
    assert [(f.seq, f.severity) for f in found] == [(200, ERROR)]


def test_identical_duplicate_is_for_review_only():
    recs = day()
    found = rules_fired(validate(recs[:21] + [dict(recs[20])] + recs[21:]), "duplicate")
    assert [(f.seq, f.severity) for f in found] == [(21, REVIEW)]


def test_no_duplicate_in_a_complete_day():
    assert rules_fired(validate(day()), "duplicate") == []


def test_time_tolerance_start_off_the_grid():
    recs = day()
    recs[30] = dict(recs[30], start=recs[30]["start"] + 7)
    found = rules_fired(validate(recs), "time_tolerance")
    assert [(f.seq, f.severity) for f in found] == [(31, ERROR)]
    assert rules_fired(validate(recs, rules=Rules(time_tolerance_s=10)), "time_tolerance") == []


def test_time_tolerance_start_off_grid_after_a_clock_set_is_for_review():
    recs = day()
    recs[30] = dict(recs[30], start=recs[30]["start"] + 300, duration_s=600, flags=["clock-set", "partial"])
    assert [f.severity for f in rules_fired(validate(recs), "time_tolerance")] == [REVIEW]


def test_time_tolerance_records_out_of_order():
    recs = day()[:10]
    recs[6], recs[7] = dict(recs[6], start=recs[7]["start"]), dict(recs[7], start=recs[6]["start"])
    found = rules_fired(validate(recs), "time_tolerance")
    assert [(f.seq, f.severity) for f in found] == [(8, ERROR)]
    assert "out of order" in found[0].detail


def test_no_time_tolerance_finding_on_the_grid_in_order():
    assert rules_fired(validate(day()), "time_tolerance") == []


def test_sum_check_finds_an_energy_the_register_disagrees_with():
    recs = day()
    recs[40] = dict(recs[40], energy_mwh=recs[40]["energy_mwh"] - 3)
    found = rules_fired(validate(recs), "sum_check")
    assert [(f.seq, f.severity) for f in found] == [(41, ERROR)]
    assert rules_fired(validate(recs, rules=Rules(sum_tolerance_mwh=3)), "sum_check") == []


def test_sum_check_blames_a_register_alone_when_the_energies_agree():
    recs = day()
    recs[40] = dict(recs[40], register_mwh=recs[40]["register_mwh"] + 1000)
    found = rules_fired(validate(recs), "sum_check")
    assert [(f.seq, f.severity) for f in found] == [(41, REVIEW)]


def test_sum_check_reaches_back_into_the_history():
    hist = history(days=1)
    recs = series([load(i) for i in range(4)], register_mwh=hist[-1]["register_mwh"] + 10)
    found = rules_fired(validate(recs, history=hist), "sum_check")
    assert [f.seq for f in found] == [1]
    assert rules_fired(validate(recs), "sum_check") == []


def test_sum_check_passes_across_a_register_reset():
    recs = day()[:10]
    recs[5:] = [dict(r, register_mwh=r["register_mwh"] - recs[4]["register_mwh"]) for r in recs[5:]]
    recs[5]["flags"] = ["register-reset"]
    assert rules_fired(validate(recs), "sum_check") == []


def test_no_sum_check_finding_in_a_complete_day():
    assert rules_fired(validate(day()), "sum_check") == []


def test_spike_far_above_both_neighbours_is_an_error():
    recs = day()
    recs[50] = dict(recs[50], energy_mwh=5_000_000)  # a corrupt value: the register did not move so
    found = rules_fired(validate(recs), "spike")
    assert [(f.seq, f.severity) for f in found] == [(51, ERROR)]


def test_spike_that_the_registers_confirm_is_for_review():
    energies = [load(i) for i in range(96)]
    energies[50] = 5_000_000
    found = rules_fired(validate(series(energies)), "spike")
    assert [(f.seq, f.severity) for f in found] == [(51, REVIEW)]


def test_no_spike_when_the_peak_is_modest():
    energies = [load(i) for i in range(96)]
    energies[50] *= 5
    assert rules_fired(validate(series(energies)), "spike") == []


def test_high_above_the_history_allows():
    energies = [load(i) for i in range(96)]
    energies[60] = 4 * max(energies)
    found = rules_fired(validate(series(energies), history=history()), "high")
    assert [(f.seq, f.severity) for f in found] == [(61, REVIEW)]


def test_high_needs_enough_history():
    energies = [load(i) for i in range(96)]
    energies[60] = 4 * max(energies)
    assert rules_fired(validate(series(energies), history=history(days=6)), "high") == []


def test_low_below_the_history_at_that_time_of_day():
    energies = [load(i) for i in range(96)]
    energies[60] = 100
    found = rules_fired(validate(series(energies), history=history()), "low")
    assert [f.seq for f in found] == [61]
    assert rules_fired(validate(series(energies), history=history(days=6)), "low") == []


def test_no_high_or_low_on_an_ordinary_day():
    found = validate(day(), history=history())
    assert rules_fired(found, "high") == rules_fired(found, "low") == []


def test_zero_consumption_on_an_active_meter():
    energies = [load(i) for i in range(96)]
    energies[10:40] = [0] * 30
    found = rules_fired(validate(series(energies), history=history(), rules=Rules(zero_run_s=6 * 3600)),
                        "zero_consumption")
    assert [(f.seq, f.severity) for f in found] == [(11, REVIEW)]
    assert "30 zero intervals" in found[0].detail


def test_no_zero_consumption_for_a_short_run_or_an_idle_meter():
    energies = [load(i) for i in range(96)]
    energies[10:30] = [0] * 20
    assert rules_fired(validate(series(energies), history=history(), rules=Rules(zero_run_s=6 * 3600)),
                       "zero_consumption") == []
    energies[10:40] = [0] * 30
    gapped = without(series(energies), 26)  # a missing interval splits the run into 16 and 14
    assert rules_fired(validate(gapped, history=history(), rules=Rules(zero_run_s=6 * 3600)),
                       "zero_consumption") == []
    idle = [dict(h, energy_mwh=1) for h in history()]  # about 4 mW: a meter with nothing behind it
    assert rules_fired(validate(series(energies), history=idle, rules=Rules(zero_run_s=6 * 3600)),
                       "zero_consumption") == []


def test_status_flags_are_for_review():
    recs = day(flags={3: ["power-down", "estimated"], 9: ["firmware-change"]})
    found = rules_fired(validate(recs), "status_flag")
    assert [(f.seq, f.severity, f.detail) for f in found] == [
        (4, REVIEW, "flagged power-down, estimated"), (10, REVIEW, "flagged firmware-change")]


def test_no_status_flag_finding_on_unflagged_intervals():
    assert rules_fired(validate(day()), "status_flag") == []


def test_error_rules_decide_severity():
    recs = without(day(), 10)
    assert rules_fired(validate(recs, rules=Rules(error_rules=frozenset())), "gap")[0].severity == REVIEW


def test_bad_input_is_one_clear_error():
    recs = day()
    recs[3] = dict(recs[3], energy_mwh="12")
    with pytest.raises(CommandError, match=r"interval record 3 \(seq 4\): energy_mwh is '12', not an integer"):
        validate(recs)
    with pytest.raises(CommandError, match="interval record 0 is int"):
        validate([5])
    with pytest.raises(CommandError, match="unknown rules bogus"):
        Rules(error_rules=frozenset({"bogus"}))
    with pytest.raises(CommandError, match="spike_factor must be 0 or more"):
        Rules(spike_factor=-1)


# --- estimation ------------------------------------------------------------------------------------

def test_interpolation_fills_a_short_gap_linearly():
    recs = series([1000, 1000, 1000, 1400, 1800, 2200, 2600, 3000])
    result = estimate(without(recs, 3, 4, 5), validate(without(recs, 3, 4, 5)), rules=Rules(honour_registers=False))
    assert [r["energy_mwh"] for r in result.records] == [1000, 1000, 1000, 1400, 1800, 2200, 2600, 3000]
    assert {e.method for e in result.edits} == {"interpolation"}
    assert not any(e.register_fit for e in result.edits)
    assert [r["start"] for r in result.records] == [r["start"] for r in recs]
    assert result.unresolved == []


def test_interpolation_is_scaled_to_the_registers_across_the_gap():
    energies = [1000, 1000, 5000, 100, 900, 1000]
    recs = without(series(energies), 2, 3, 4)
    result = estimate(recs, validate(recs))
    assert [r["energy_mwh"] for r in result.records[2:5]] == [2000, 2000, 2000]  # 6000 shared as the line says
    assert sum(r["energy_mwh"] for r in result.records) == sum(energies)
    assert [r["register_mwh"] for r in result.records] == [r["register_mwh"] for r in series([1000] * 2 + [2000] * 3
                                                                                              + [1000])]
    assert all(e.method == "interpolation" and e.register_fit for e in result.edits)


def test_interpolation_refused_across_a_power_down_endpoint():
    recs = without(day(flags={19: ["power-down", "estimated"]}), 20, 21)
    found = validate(recs)
    plain = estimate(recs, found, rules=Rules(honour_registers=False))
    assert plain.edits == []
    assert [u.start for u in plain.unresolved] == [MONDAY + 20 * IV, MONDAY + 21 * IV]
    assert "power-down" in plain.unresolved[0].reason
    with_history = estimate(recs, found, history=history(), rules=Rules(honour_registers=False))
    assert {e.method for e in with_history.edits} == {"like_day"}
    with_registers = estimate(recs, found)
    assert {e.method for e in with_registers.edits} == {"register_prorate"}
    share = (load(20) + load(21)) // 2  # the registers' move, shared by time
    assert [e.estimate["energy_mwh"] for e in with_registers.edits] == [share, share]


def test_like_day_beyond_two_hours_takes_weekdays_from_weekdays():
    missing = list(range(40, 52))  # three hours
    recs = without(day(), *missing)
    result = estimate(recs, validate(recs), history=history(weekend_level=9000), rules=Rules(honour_registers=False))
    assert {e.method for e in result.edits} == {"like_day"}
    assert [e.estimate["energy_mwh"] for e in result.edits] == [load(i) for i in missing]
    assert "2026-01-02" in result.edits[0].detail and "2026-01-03" not in result.edits[0].detail


def test_like_day_takes_a_holiday_from_weekends():
    recs = without(day(), *range(40, 52))
    result = estimate(recs, validate(recs), history=history(weekend_level=300_000),
                      rules=Rules(honour_registers=False, holidays=frozenset({date(2026, 1, 5)})))
    assert [e.estimate["energy_mwh"] for e in result.edits] == [load(i, 300_000) for i in range(40, 52)]


def test_like_day_averages_the_most_recent_like_days():
    hist = history(days=14)
    for r in hist[-3 * 96:]:  # the last three days: Friday, and a weekend the estimate must not take
        r["energy_mwh"] += 300
    recs = without(day(), *range(40, 52))
    result = estimate(recs, validate(recs), history=hist, rules=Rules(honour_registers=False, like_days=3))
    # Friday at +300 and Thursday, Wednesday as they were: +100 on average.
    assert [e.estimate["energy_mwh"] for e in result.edits] == [load(i) + 100 for i in range(40, 52)]


def test_no_register_fit_across_a_register_reset():
    recs = day()[:8]
    recs[6:] = [dict(r, register_mwh=r["register_mwh"] - recs[5]["register_mwh"]) for r in recs[6:]]
    recs[6]["flags"] = ["register-reset"]
    recs = without(recs, 3)
    result = estimate(recs, validate(recs))
    assert [(e.method, e.register_fit) for e in result.edits] == [("interpolation", True)]
    recs = without(recs, 3, 4)  # now the reset interval closes the gap: its register says nothing of it
    result = estimate(recs, validate(recs))
    assert [(e.method, e.register_fit) for e in result.edits] == [("interpolation", False)] * 3


def test_gap_left_missing_when_nothing_can_fill_it():
    recs = without(day(), *range(40, 52))
    result = estimate(recs, validate(recs), rules=Rules(honour_registers=False))
    assert result.edits == []
    assert len(result.unresolved) == 12 and result.unresolved[0].original is None
    assert "10800 s long, over 7200 s" in result.unresolved[0].reason
    assert len(result.records) == 96 - 12


def test_audit_trail_holds_original_rule_estimate_and_method():
    recs = day()
    bad = recs[50] = dict(recs[50], energy_mwh=5_000_000)
    recs = without(recs, 70)
    result = estimate(recs, validate(recs))
    by_start = {e.start: e for e in result.edits}
    spike = by_start[MONDAY + 50 * IV]
    assert spike.original is bad and spike.rule == "sum_check, spike" and spike.seq == 51
    assert spike.method == "interpolation" and spike.register_fit
    assert spike.estimate["energy_mwh"] == load(50)  # the registers knew
    assert spike.estimate["flags"] == ["estimated"]
    gap = by_start[MONDAY + 70 * IV]
    assert gap.original is None and gap.rule == "gap" and gap.seq is None
    assert gap.estimate["energy_mwh"] == load(70)
    assert set(by_start) == {MONDAY + 50 * IV, MONDAY + 70 * IV}
    assert [r["start"] for r in result.records] == [MONDAY + i * IV for i in range(96)]
    assert result.records[50] is spike.estimate and result.records[49] is recs[49]


def test_review_findings_change_nothing():
    recs = day(flags={3: ["power-down"]})
    result = estimate(recs, validate(recs))
    assert result.edits == [] and result.records == recs


def test_conflicting_duplicates_are_replaced_by_one_estimate():
    recs = day()
    other = dict(recs[20], seq=200, energy_mwh=7)
    result = estimate(recs + [other], validate(recs + [other]))
    assert [r["start"] for r in result.records] == [MONDAY + i * IV for i in range(96)]
    assert [(e.seq, e.rule) for e in result.edits] == [(21, "duplicate, time_tolerance")]  # seq 200 is late


# --- follow-up reads and the exception report -------------------------------------------------------

def test_follow_up_ranges_are_merged():
    def f(start, end, severity=ERROR):
        return Finding(start, None, "gap", "", severity, end)
    found = [f(1800, 2700), f(900, 1800), f(5400, 6300), f(2700, 3600), f(9000, 9900, REVIEW), f(6000, 6300)]
    assert follow_up(found) == [(900, 3600), (5400, 6300)]
    assert follow_up([]) == []


def test_merge_reads_takes_reread_records_in_place_of_missing_and_corrupt_ones():
    good = day()
    recs = without(good, 10)
    recs[40] = dict(recs[40], energy_mwh=1)  # good[41]: corrupt on the link
    found = validate(recs)
    merged = merge_reads(recs, good[5:45], found)
    assert merged.records == good
    assert [(t.start, t.rule, t.original) for t in merged.taken] == [
        (MONDAY + 10 * IV, "gap", None), (MONDAY + 41 * IV, "sum_check", recs[40])]
    assert validate(merged.records) == []


def test_merge_reads_keeps_what_a_reread_only_repeats():
    recs = day()
    recs[40] = dict(recs[40], energy_mwh=1)
    merged = merge_reads(recs, [recs[40]], validate(recs))
    assert merged.taken == [] and merged.records == recs


def test_exception_rows_say_what_was_done():
    hist = history()
    good = day()
    recs = list(good)
    recs[20] = dict(recs[20], energy_mwh=1)
    recs[30] = dict(recs[30], flags=["firmware-change"])
    recs = without(recs, 10, *range(60, 76))
    first = validate(recs, history=hist)
    merged = merge_reads(recs, [good[10]], first)
    found = validate(merged.records, history=hist)
    result = estimate(merged.records, found, history=hist, rules=Rules(honour_registers=False))
    rows = exception_rows("MTR-7", [*first, *found], result, reread=merged.taken)
    actions = {(r["start"], r["rule"]): r["action"] for r in rows}
    assert actions == {
        (MONDAY + 10 * IV, "gap"): "re-read",
        (MONDAY + 20 * IV, "sum_check"): "estimated by interpolation",
        (MONDAY + 20 * IV, "low"): "estimated by interpolation",  # a review rule, on an interval replaced
        (MONDAY + 30 * IV, "status_flag"): "for review",
        **{(MONDAY + i * IV, "gap"): "estimated by like_day" for i in range(60, 76)},
    }
    row = next(r for r in rows if r["rule"] == "sum_check")
    assert (row["meter"], row["seq"], row["severity"], row["original_mwh"], row["estimate_mwh"]) == (
        "MTR-7", 21, ERROR, 1, (load(19) + load(21)) // 2)
    left = exception_rows("MTR-7", found, estimate(merged.records, found, rules=Rules(honour_registers=False)))
    assert {r["action"] for r in left if r["rule"] == "gap"} == {"left missing"}


# --- properties ------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(energies=st.lists(st.integers(0, 5000), min_size=3, max_size=40),
       dropped=st.sets(st.integers(0, 39)),
       power_down=st.sets(st.integers(0, 39), max_size=3),
       honour=st.booleans())
def test_estimation_fills_what_it_may_keeps_what_passed_and_records_every_edit(energies, dropped, power_down,
                                                                               honour):
    flags = {i: ["power-down", "estimated"] for i in power_down}
    full = series(energies, flags=flags)
    recs = [r for i, r in enumerate(full) if i not in dropped]
    if not recs:
        return
    rules = Rules(honour_registers=honour)
    found = validate(recs, rules=rules)
    result = estimate(recs, found, rules=rules)
    failed = {f.seq for f in found if f.severity == ERROR}
    out = {r["start"]: r for r in result.records}
    edits = {e.start: e for e in result.edits}

    # One record per expected start, in order, none twice.
    starts = [r["start"] for r in result.records]
    assert starts == sorted(set(starts))
    # Every record that passed is kept as it was.
    for r in recs:
        if r["seq"] not in failed:
            assert out[r["start"]] is r
    # Every changed or added interval has its edit, which holds what the series now holds.
    original = {r["start"]: r for r in recs}
    for start, r in out.items():
        if original.get(start) is not r:
            assert edits[start].estimate is r and "estimated" in r["flags"]
            assert edits[start].original is original.get(start)
    # No gap is left that interpolation may fill: each unresolved run is too long or lacks a good
    # whole interval on one side.
    missing = sorted(u.start for u in result.unresolved)
    runs = []
    for start in missing:
        if runs and start == runs[-1][-1] + IV:
            runs[-1].append(start)
        else:
            runs.append([start])
    for run in runs:
        left, right = out.get(run[0] - IV), out.get(run[-1] + IV)
        assert (len(run) * IV > rules.max_interpolation_s or left is None or right is None
                or "power-down" in left["flags"] + right["flags"])
    # With the registers honoured, energy is conserved across every gap.
    if honour:
        first, last = recs[0], recs[-1]
        assert result.unresolved == []
        assert sum(r["energy_mwh"] for r in result.records) == (last["register_mwh"] - first["register_mwh"]
                                                                + first["energy_mwh"])
