"""The meter data management system's side of the back office (FR17, FR18; use case step 8 before a
switch and steps 13-14 after it): scheduled reads of intervals, registers, events and alarms
into the database; VEE over what was read (vee.py), with follow-up reads from the meter before
anything is estimated, every edit kept with its original in an audit trail, and an exception
report; and a campaign's reconciliation: did each meter's billing data come through its upgrade
intact."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from . import fleet, vee
from .errors import MeterfwError
from .store import Store, dumps, loads

_INTERVAL_COLS = ("start", "seq", "duration_s", "energy_mwh", "received_mwh", "register_mwh", "flags", "source")


# --- storing what was read --------------------------------------------------------------------------

def store_intervals(store: Store, serial: str, records: list[dict], read_s: float, source: str = "meter",
                    replace: bool = False) -> int:
    """Intervals as the meter gave them. A start already held from the meter keeps its first
    reading (a different one later is the VEE's business) unless `replace` (a follow-up read the
    VEE asked for); an estimate always gives way to a reading."""
    rows = [(serial, r["start"], r.get("seq"), r["duration_s"], r.get("energy_mwh"), r.get("received_mwh"),
             r.get("register_mwh"), ",".join(r.get("flags") or ()), source, read_s) for r in records]
    store.many("INSERT INTO intervals (serial, start, seq, duration_s, energy_mwh, received_mwh, register_mwh, flags, "
               "source, read_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial, start) DO UPDATE SET "
               "seq = excluded.seq, energy_mwh = excluded.energy_mwh, received_mwh = excluded.received_mwh, "
               "register_mwh = excluded.register_mwh, flags = excluded.flags, source = excluded.source, "
               "read_s = excluded.read_s" + ("" if replace else " WHERE intervals.source = 'estimated'"), rows)
    return len(rows)


def store_snapshot(store: Store, serial: str, snap: dict) -> None:
    """What an upgrade's snapshot read (FR4) goes into the meter data too: one read, not two."""
    t = snap.get("taken_s") or time.time()
    with store.tx():
        store_intervals(store, serial, snap.get("intervals") or [], t)
        store.many("INSERT INTO meter_events (serial, seq, time_s, code, name, value) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (serial, seq) DO NOTHING",
                   [(serial, e["seq"], e.get("time"), e["code"], e.get("name"), dumps(e.get("value")))
                    for e in snap.get("events") or []])
        regs = snap.get("registers")
        if regs:
            ivs = snap.get("intervals") or []
            store.x("INSERT INTO register_reads (serial, read_s, delivered_mwh, received_mwh, last_interval_seq, "
                    "version) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (serial, read_s) DO NOTHING",
                    (serial, t, regs["delivered_mwh"], regs["received_mwh"], ivs[-1]["seq"] if ivs else None,
                     (snap.get("status") or {}).get("active_version")))
            store.many("INSERT INTO alarms (serial, seq, time_s, name, message, report, read_s) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial, seq) DO NOTHING",
                       [(serial, a["seq"], a.get("time"), str(a.get("name")), str(a.get("message")),
                         str(a.get("report")), t) for a in regs.get("alarms") or []])


def read_meter(store: Store, fm: fleet.FleetMeter, *, timeout_s: float = 3.0) -> dict:
    """One scheduled read: intervals and events since what the database holds, the registers
    (which carry the alarms held for this read, FR16) and the alarms."""
    last_seq = store.one("SELECT MAX(seq) FROM intervals WHERE serial = ? AND source = 'meter'", (fm.serial,))[0]
    last_ev = store.one("SELECT MAX(seq) FROM meter_events WHERE serial = ?", (fm.serial,))[0]
    meter = fleet.open_meter(fm, timeout_s)
    try:
        st = meter.status()
        snap = {"taken_s": time.time(), "status": st,
                "intervals": meter.read_intervals((last_seq or 0) + 1 if last_seq is not None else 0),
                "events": meter.read_events((last_ev or 0) + 1 if last_ev is not None else 0),
                "registers": meter.read_registers()}
        held = meter.read_alarms()
    finally:
        meter.link.close()
    regs = snap["registers"]
    regs["alarms"] = list({a["seq"]: a for a in regs.get("alarms", []) + held}.values())
    store_snapshot(store, fm.serial, snap)
    fleet.seen(store, fm.serial, st)
    return {"serial": fm.serial, "intervals": len(snap["intervals"]), "events": len(snap["events"]),
            "alarms": len(regs["alarms"]), "version": st.get("active_version")}


def read_fleet(store: Store, selection: fleet.Selection | None = None, *, timeout_s: float = 3.0,
               workers: int = 8, progress=None) -> list[dict]:
    todo = fleet.meters(store, selection)

    def one(fm):
        try:
            return read_meter(store, fm, timeout_s=timeout_s)
        except MeterfwError as e:
            fleet.seen(store, fm.serial, None, " ".join(str(e).split()))
            return {"serial": fm.serial, "error": " ".join(str(e).split())}

    out = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        for i, r in enumerate(pool.map(one, todo), 1):
            out.append(r)
            if progress:
                progress(i, len(todo))
    return out


def intervals(store: Store, serial: str, since_s: int | None = None, until_s: int | None = None) -> list[dict]:
    rows = store.rows("SELECT start, seq, duration_s, energy_mwh, received_mwh, register_mwh, flags, source "
                      "FROM intervals WHERE serial = ? AND start >= ? AND start < ? ORDER BY start",
                      (serial, since_s if since_s is not None else -2**62, until_s if until_s is not None else 2**62))
    out = []
    for r in rows:
        d = dict(zip(_INTERVAL_COLS, r))
        d["flags"] = [f for f in d["flags"].split(",") if f]
        d["energy_wh"] = (d["energy_mwh"] or 0) / 1000
        out.append(d)
    return out


def audit(store: Store, serial: str | None = None) -> list[dict]:
    cols = ("run_id", "serial", "start", "rule", "original", "estimate_mwh", "method", "time_s")
    sql = f"SELECT {', '.join(cols)} FROM vee_edits" + (" WHERE serial = ?" if serial else "") + " ORDER BY serial, start"
    return [{**dict(zip(cols, r)), "original": loads(r[4])} for r in store.rows(sql, (serial,) if serial else ())]


# --- VEE over what was read -------------------------------------------------------------------------

def _readings(store: Store, serial: str) -> list[dict]:
    """What the meter itself gave (estimates are the VEE's own output, never its input)."""
    return [r for r in intervals(store, serial) if r["source"] == "meter"]


def vee_meter(store: Store, fm: fleet.FleetMeter, run_id: int, *, follow_up: bool = True, timeout_s: float = 3.0,
              rules: vee.Rules = vee.Rules()) -> dict:
    """One meter's VEE: validate; read again from the meter what is missing or corrupt (FR18);
    validate again; estimate what is still wrong, keeping each original beside its estimate."""
    records = _readings(store, fm.serial)
    first = vee.validate(records, rules=rules)
    taken: list = []
    ranges = vee.follow_up(first) if follow_up else []
    reread_error = None
    if ranges:
        try:
            meter = fleet.open_meter(fm, timeout_s)
            try:
                again = [r for start, end in ranges for r in meter.read_intervals(since_s=start) if r["start"] < end]
            finally:
                meter.link.close()
            merged = vee.merge_reads(records, again, first, rules=rules)
            records, taken = merged.records, merged.taken
            store_intervals(store, fm.serial, [t.record for t in taken], time.time(), replace=True)
        except MeterfwError as e:
            reread_error = " ".join(str(e).split())
    found = vee.validate(records, rules=rules)
    est = vee.estimate(records, found, rules=rules)
    now = time.time()
    with store.tx():
        for e in est.edits:
            store.x("INSERT INTO vee_edits (run_id, serial, start, rule, original, estimate_mwh, method, time_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (run_id, fm.serial, e.start, e.rule, dumps(e.original),
                                                        e.estimate.get("energy_mwh"), e.method, now))
        store_intervals(store, fm.serial, [e.estimate for e in est.edits if e.original is None], now, "estimated")
        rows = vee.exception_rows(fm.serial, [*first, *found], est, reread=taken)
        store.many("INSERT INTO exceptions (run_id, serial, start, rule, detail, action) VALUES (?, ?, ?, ?, ?, ?)",
                   [(run_id, r["meter"], r["start"], r["rule"], r["detail"], r["action"]) for r in rows])
    return {"serial": fm.serial, "intervals": len(records), "findings": len(found), "re_read": len(taken),
            "estimated": len(est.edits), "left_missing": len(est.unresolved), "re_read_error": reread_error,
            "exceptions": rows}


def run_vee(store: Store, selection: fleet.Selection | None = None, *, follow_up: bool = True,
            timeout_s: float = 3.0, campaign_id: int | None = None, rules: vee.Rules = vee.Rules()) -> dict:
    """VEE over every selected meter's stored readings; the exception report lists every meter,
    interval and rule, and what was done."""
    run_id = store.one("INSERT INTO vee_runs (time_s, scope, campaign_id) VALUES (?, ?, ?) RETURNING id",
                       (time.time(), dumps((selection or fleet.Selection()).as_dict()), campaign_id))[0]
    meters_ = [vee_meter(store, fm, run_id, follow_up=follow_up, timeout_s=timeout_s, rules=rules)
               for fm in fleet.meters(store, selection)]
    return {"run_id": run_id, "meters": meters_, "exceptions": [r for m in meters_ for r in m["exceptions"]]}


# --- a campaign's reconciliation (step 14) ---------------------------------------------------------

# What breaks billing data: the rules whose findings mean an interval is missing, doubled or
# does not add up. The others (high, low, flags) are for review whatever an upgrade did.
_BILLING_RULES = ("gap", "duplicate", "time_tolerance", "sum_check")


def reconcile_meter(store: Store, serial: str, switch_s: float | None, report: dict | None) -> dict:
    """Did this meter's billing data come through its upgrade intact: the intervals read on both
    sides of the switch are complete, single and add up to the register, the interval after the
    switch carries the firmware-change flag, and the upgrade's own comparison found nothing."""
    records = _readings(store, serial)
    problems = [f"{f.rule} at {f.start}: {f.detail}" for f in vee.validate(records)
                if f.rule in _BILLING_RULES and f.severity == vee.ERROR]
    if switch_s is not None:
        if not records or records[0]["start"] >= switch_s:
            problems.append("no interval read before the switch")
        after = [r for r in records if r["start"] + r["duration_s"] > switch_s]
        if after and vee.FIRMWARE_CHANGE not in after[0]["flags"]:
            problems.append(f"the interval at the switch ({after[0]['start']}) is not flagged firmware-change")
    for d in (report or {}).get("discrepancies") or []:
        problems.append(d)
    if report and report.get("energy_conserved") is False:
        problems.append("interval energy does not add up to the register across the upgrade")
    return {"serial": serial, "intact": not problems, "problems": problems, "intervals": len(records)}


def reconcile_campaign(store: Store, cid: int) -> dict:
    """Per meter and per wave, whether billing data came through intact. Meters the campaign
    never switched are not judged."""
    rows = store.rows("SELECT serial, wave, state, switch_s, report FROM campaign_meters WHERE campaign_id = ? "
                      "ORDER BY wave, serial", (cid,))
    meters_, waves = [], {}
    for serial, wave, state, switch_s, report in rows:
        if switch_s is None and state not in ("confirmed", "warned", "reverted"):
            continue
        r = reconcile_meter(store, serial, switch_s, loads(report))
        r["wave"], r["state"] = wave, state
        meters_.append(r)
        w = waves.setdefault(wave, {"wave": wave, "meters": 0, "intact": 0})
        w["meters"] += 1
        w["intact"] += r["intact"]
    return {"campaign_id": cid, "meters": meters_, "waves": [waves[k] for k in sorted(waves)],
            "intact": all(m["intact"] for m in meters_)}
