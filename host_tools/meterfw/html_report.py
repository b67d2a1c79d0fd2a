"""Self-contained HTML reports: one page for a fleet campaign, one for a single upgrade, each with
the meters' interval energy plotted around their switch. The plots are inline SVG written here,
so a page needs no script, no network and no other file: it opens anywhere and can be filed or
mailed as it is. Every text that came from a meter or a file goes through `html.escape`.

Inputs are plain dicts (JSON-able): `render_campaign(campaign)` and `render_upgrade(report,
intervals)`, where `report` is what `upgrade.upgrade()` returns. An interval record is the
meter's: `seq`, `start` (epoch s), `duration_s`, `energy_mwh`, `register_mwh`, `flags` (names)."""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

from .errors import CommandError

PLOT_ALL_UP_TO = 60  # meters; a larger fleet plots its notable meters and a sample of the rest
SAMPLE_SIZE = 24  # unremarkable meters plotted from a large fleet
NOTABLE_MAX = 200  # failed, reverted and warned meters plotted at most, so the page stays small
WINDOW = 48  # intervals plotted on each side of the switch
LISTED_MAX = 12  # serials named in one row of the failure-reasons table

CAMPAIGN_STATES = ("running", "paused", "aborted", "completed", "rolled_back")
METER_RESULTS = ("confirmed", "reverted", "rejected", "failed", "pending", "in_progress", "skipped")
# A wave's stacked bar, in this order; `warned` is not a segment: a warned meter is counted in
# its result as well.
WAVE_SEGMENTS = ("confirmed", "reverted", "rejected", "failed", "in_progress", "pending")
_PROBLEM_RESULTS = ("failed", "reverted", "rejected")

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2937;margin:24px auto;max-width:1280px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.sub{color:#6b7280;margin:0 0 12px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}dl.facts dt{color:#6b7280}
dl.facts dd{margin:0}table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}table.reasons td:nth-child(2){min-width:16em}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;background:#6b7280}
.r-confirmed,.s-completed,.s-running{background:#059669}.r-reverted,.s-paused{background:#d97706}
.r-rejected{background:#7c3aed}.r-failed,.s-aborted,.s-rolled_back{background:#dc2626}
.r-warning{background:#b45309}.r-in_progress{background:#2563eb}.r-pending,.r-skipped{background:#9ca3af}
svg.bar .confirmed{fill:#059669}svg.bar .reverted{fill:#d97706}svg.bar .rejected{fill:#7c3aed}
svg.bar .failed{fill:#dc2626}svg.bar .in_progress{fill:#2563eb}svg.bar .pending{fill:#d1d5db}
svg.bar .empty{fill:#f3f4f6}.chips span{margin-right:12px}
.note{background:#f9fafb;border-left:3px solid #9ca3af;padding:6px 10px;margin:8px 0}
.legend span{margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:-1px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
figure.meter{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px}
figure.meter figcaption{font-size:13px}.reason{color:#6b7280}.verdict{font-size:12px;margin:4px 0 0}
.intact{color:#047857}.problems{color:#b91c1c}.warnings{color:#b45309}
.verdict ul{margin:2px 0;padding-left:18px}.nodata{color:#9ca3af;font-size:12px;padding:24px 0}
.notes{color:#6b7280;font-size:11px;margin:2px 0 0}svg.plot{display:block;width:100%;height:auto}
svg.plot text{font-size:10px;fill:#4b5563}svg.plot .axis{fill:none;stroke:#9ca3af;stroke-width:1}
svg.plot .before,.legend .before{fill:#93c5fd;stroke:#2563eb;background:#93c5fd}
svg.plot .after,.legend .after{fill:#6ee7b7;stroke:#059669;background:#6ee7b7}
svg.plot .estimated,.legend .estimated{fill:#fbbf24;fill-opacity:.9;stroke:#b45309;stroke-dasharray:2 1;background:#fbbf24}
svg.plot .flagged,.legend .flagged{fill:#dc2626;background:#dc2626}
svg.plot .gap,.legend .gap{fill:#e5e7eb;stroke:#9ca3af;stroke-dasharray:3 2;background:#e5e7eb}
svg.plot .switch{stroke:#b91c1c;stroke-width:1.5;stroke-dasharray:4 2}
.legend .switch{background:#b91c1c;width:2px}svg.plot text.switch-label{fill:#b91c1c;font-weight:600}
"""

_LEGEND = ('<p class="legend"><span><i class="before"></i>before the switch</span>'
           '<span><i class="after"></i>after the switch</span><span><i class="switch"></i>switch</span>'
           '<span><i class="estimated"></i>estimated interval</span>'
           '<span><i class="flagged"></i>other flags (power-down, clock-set, firmware-change, ...)</span>'
           '<span><i class="gap"></i>missing intervals</span></p>')


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def write(path, page: str) -> None:
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}") from None


# --- the two pages ------------------------------------------------------------------------------

def render_campaign(c: dict) -> str:
    """The campaign's page: header, waves, failure reasons, and the meters' plots."""
    _check_campaign(c)
    meters = c["meters"]
    image = c.get("image") or {}
    counts = {r: 0 for r in METER_RESULTS}
    for m in meters:
        counts[m["result"]] += 1
    title = f"Campaign {c['name']}"
    head = [f"<h1>{esc(title)} <span class=\"badge s-{esc(c['state'])}\">{esc(c['state'])}</span></h1>",
            f"<p class=\"sub\">image {esc(image.get('version'))}"
            + (f" (<span title=\"{esc(image.get('image_id'))}\">{esc(str(image.get('image_id'))[:16])}</span>)"
               if image.get("image_id") else "") + "</p>",
            _facts([("campaign id", c.get("id")), ("created", _when(c.get("created_s"))),
                    ("updated", _when(c.get("updated_s"))), ("meters", f"{len(meters):,}"),
                    ("waves", len(c["waves"]))]),
            '<p class="chips">' + "".join(f'<span><span class="badge r-{r}">{r.replace("_", " ")}</span> {n:,}</span>'
                                          for r, n in counts.items() if n) + "</p>"]
    plotted, note = choose_plotted(meters)
    anchors = {id(m): f"m{i}" for i, m in enumerate(plotted)}
    body = head + ["<h2>Waves</h2>", _wave_table(c["waves"]),
                   "<h2>Failure reasons</h2>", _reason_table(meters, anchors),
                   "<h2>Meters</h2>", f'<p class="note">{esc(note)}</p>' if note else "", _LEGEND,
                   '<div class="grid">' + "".join(_meter_card(m, anchors[id(m)]) for m in plotted) + "</div>"]
    return _page(title, body)


def render_upgrade(report: dict, intervals: list[dict]) -> str:
    """One upgrade's page: the verdict, the transfer, the reconciliation, and the meter's interval
    energy around the switch."""
    if not isinstance(report, dict) or report.get("result") is None:
        raise CommandError("upgrade report: not an upgrade() report (no 'result')")
    if not isinstance(intervals, list):
        raise CommandError("upgrade report: intervals must be a list of interval records")
    for i, rec in enumerate(intervals):
        _check_interval(rec, f"upgrade report: interval record {i}")
    r = report
    serial = r.get("serial") or "unknown meter"
    title = f"Upgrade of {serial}"
    switch_s = _switch_time(r.get("activate_at_s"), intervals)
    body = [f"<h1>{esc(title)} <span class=\"badge r-{esc(r['result'])}\">{esc(r['result'])}</span></h1>",
            f"<p class=\"sub\">{esc(r.get('from_version') or '?')} \u2192 {esc(r.get('to_version') or '?')}"
            + (f" &mdash; {esc(r['reason'])}" if r.get("reason") else "") + "</p>",
            _facts([("board", r.get("board")), ("image kind", r.get("kind")), ("image id", r.get("image_id")),
                    ("activation", _activation(r)), ("switch", _when(switch_s)),
                    ("registers", r.get("registers")), ("acknowledgement", r.get("ack")),
                    ("took", _unit(r.get("seconds"), "s")),
                    ("activation to first read", _unit(r.get("activation_to_first_read_s"), "s"))])]
    if "transfer_seconds" in r:
        body += ["<h2>Transfer</h2>", _facts([
            ("method", r.get("method")), ("image", _unit(r.get("image_bytes"), "bytes")),
            ("on the wire", _unit(r.get("bytes_on_wire"), "bytes")), ("time", _unit(r.get("transfer_seconds"), "s")),
            ("rate", _unit(r.get("transfer_bytes_per_s"), "B/s")), ("resumed from block", r.get("resumed_from_block")),
            ("blocks", r.get("blocks")), ("signature check", _unit(r.get("signature_ms"), "ms")),
            ("verify", _unit(r.get("verify_ms"), "ms"))])]
    body += ["<h2>Billing data</h2>", _facts([
        ("intervals before / after", _pair(r, "intervals_before", "intervals_after")),
        ("missed / duplicated", _pair(r, "intervals_missed", "intervals_duplicated")),
        ("interval energy", _unit(r.get("interval_energy_mwh"), "mWh")),
        ("register delta", _unit(r.get("register_delta_mwh"), "mWh")),
        ("energy conserved", {True: "yes", False: "no"}.get(r.get("energy_conserved")))])]
    meter = {"serial": serial, "result": r["result"], "reason": r.get("reason"), "warnings": [],
             "from_version": r.get("from_version"), "to_version": r.get("to_version"), "switch_s": switch_s,
             "intervals": intervals, "reconciliation": upgrade_reconciliation(r)}
    body += [_LEGEND, _meter_card(meter, "meter", width=760, height=240)]
    return _page(title, body)


def upgrade_reconciliation(r: dict) -> dict | None:
    """The billing-data verdict of one upgrade report, or None when there was no second snapshot
    to compare (the image was rejected, or the meter gave no verdict)."""
    if "discrepancies" not in r:
        return None
    problems = list(r["discrepancies"])
    if r.get("energy_conserved") is False:
        problems.append(f"energy not conserved: intervals hold {r.get('interval_energy_mwh')} mWh, "
                        f"the register moved {r.get('register_delta_mwh')} mWh")
    return {"intact": not problems, "problems": problems}


# --- which meters get a plot --------------------------------------------------------------------

def _notable(m: dict) -> int | None:
    """The meter's rank among those always plotted (failed first), or None for an ordinary one."""
    if m["result"] == "failed":
        return 0
    if m["result"] == "reverted":
        return 1
    rec = m.get("reconciliation")
    if m.get("warnings") or (rec is not None and not rec.get("intact", True)):
        return 2
    return None


def choose_plotted(meters: list[dict]) -> tuple[list[dict], str]:
    """The meters to plot, and what the page says about the choice. Up to PLOT_ALL_UP_TO meters
    all are plotted; beyond, the failed, reverted and warned ones (at most NOTABLE_MAX) and
    SAMPLE_SIZE of the rest, spread evenly over the fleet in wave and serial order."""
    if len(meters) <= PLOT_ALL_UP_TO:
        return meters, ""
    order = sorted(meters, key=lambda m: (m.get("wave") if isinstance(m.get("wave"), int) else -1, str(m["serial"])))
    notable = sorted((m for m in order if _notable(m) is not None), key=_notable)
    others = [m for m in order if _notable(m) is None]
    step = max(len(others) / SAMPLE_SIZE, 1)
    sample = [others[int(i * step)] for i in range(min(SAMPLE_SIZE, len(others)))]
    kept = notable[:NOTABLE_MAX]
    note = (f"{len(meters):,} meters: plotted are {len(kept):,} failed, reverted or warned meters"
            + (f" (the first {NOTABLE_MAX} of {len(notable):,}; the failure-reasons table counts them all)"
               if len(notable) > NOTABLE_MAX else "")
            + f" and a sample of {len(sample)} of the other {len(others):,}, spread evenly over the waves.")
    return kept + sample, note


# --- tables -------------------------------------------------------------------------------------

def _wave_table(waves: list[dict]) -> str:
    if not waves:
        return "<p>No waves.</p>"
    cols = ("confirmed", "reverted", "rejected", "failed", "in_progress", "pending", "warned")
    rows = ["<table><tr><th>#</th><th>wave</th><th>state</th><th>meters</th>"
            + "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols) + "<th>progress</th></tr>"]
    for w in waves:
        res = w.get("results") or {}
        rows.append(f"<tr><td class=\"n\">{esc(w.get('index'))}</td><td>{esc(w.get('name'))}</td>"
                    f"<td>{esc(w.get('state'))}</td><td class=\"n\">{_int(w.get('meters'))}</td>"
                    + "".join(f"<td class=\"n\">{_int(res.get(c))}</td>" for c in cols)
                    + f"<td>{_wave_bar(w.get('meters') or 0, res)}</td></tr>")
    return "".join(rows) + "</table>"


def _wave_bar(total: int, res: dict, width: int = 140, height: int = 12) -> str:
    parts = [f'<svg class="bar" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
             f'<rect class="empty" width="{width}" height="{height}"/>']
    x = 0.0
    for seg in WAVE_SEGMENTS:
        n = res.get(seg)
        if isinstance(n, int) and n > 0 and isinstance(total, int) and total > 0:
            w = width * n / total
            parts.append(f'<rect class="{seg}" x="{_n(x)}" width="{_n(w)}" height="{height}">'
                         f'<title>{seg.replace("_", " ")}: {n:,}</title></rect>')
            x += w
    return "".join(parts) + "</svg>"


def _reason_table(meters: list[dict], anchors: dict) -> str:
    groups: dict[tuple, list] = {}
    for m in meters:
        if m["result"] in _PROBLEM_RESULTS:
            groups.setdefault((m["result"], m.get("reason") or "(no reason given)"), []).append(m)
        for w in m.get("warnings") or ():
            groups.setdefault(("warning", w), []).append(m)
    if not groups:
        return "<p>No meter failed, reverted, was rejected or warned.</p>"
    rows = ["<table class=\"reasons\"><tr><th>outcome</th><th>reason</th><th>count</th><th>meters</th></tr>"]
    for (outcome, reason), ms in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        named = ", ".join(f'<a href="#{anchors[id(m)]}">{esc(m["serial"])}</a>' if id(m) in anchors
                          else esc(m["serial"]) for m in ms[:LISTED_MAX])
        more = f" and {len(ms) - LISTED_MAX:,} more" if len(ms) > LISTED_MAX else ""
        rows.append(f'<tr><td><span class="badge r-{esc(outcome)}">{esc(outcome)}</span></td><td>{esc(reason)}</td>'
                    f'<td class="n">{len(ms):,}</td><td>{named}{more}</td></tr>')
    return "".join(rows) + "</table>"


# --- one meter ----------------------------------------------------------------------------------

def _meter_card(m: dict, anchor: str, width: int = 380, height: int = 140) -> str:
    result = m["result"]
    versions = f"{m.get('from_version') or '?'} \u2192 {m.get('to_version') or '?'}"
    wave = f" &middot; wave {esc(m['wave'])}" if m.get("wave") is not None else ""
    caption = (f'<figcaption><b>{esc(m["serial"])}</b> <span class="badge r-{esc(result)}">'
               f'{esc(result.replace("_", " "))}</span> {esc(versions)}{wave}'
               + (f'<br><span class="reason">{esc(m["reason"])}</span>' if m.get("reason") else "") + "</figcaption>")
    switch_s = _switch_time(m.get("switch_s"), m.get("intervals") or [])
    if m.get("intervals"):
        svg, notes = plot(m["intervals"], switch_s, width=width, height=height, serial=m["serial"])
    else:
        svg, notes = '<div class="nodata">no interval data</div>', []
    return (f'<figure class="meter" id="{esc(anchor)}" data-serial="{esc(m["serial"])}">{caption}{svg}'
            + (f'<p class="notes">{esc("; ".join(notes))}</p>' if notes else "")
            + _verdict(m.get("reconciliation"), m.get("warnings") or []) + "</figure>")


def _verdict(rec: dict | None, warnings: list) -> str:
    if rec is None:
        out = '<p class="verdict">billing data not reconciled</p>'
    elif rec.get("intact"):
        out = '<p class="verdict intact">&#10003; billing data intact</p>'
    else:
        problems = rec.get("problems") or ["billing data not intact"]
        out = ('<div class="verdict problems">billing data problems:<ul>'
               + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul></div>")
    if warnings:
        out += ('<div class="verdict warnings">warnings:<ul>'
                + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    return out


def _switch_time(switch_s, intervals: list[dict]):
    """The switch as given, else the start of the first interval the meter flagged
    firmware-change (a meter switched by hand leaves no activation time)."""
    if switch_s is not None:
        return switch_s
    for rec in sorted(intervals, key=lambda r: r["start"]):
        if "firmware-change" in _flags(rec):
            return rec["start"]
    return None


def _flags(rec: dict) -> set:
    return {str(f).replace("_", "-") for f in rec.get("flags") or ()}


def plot(intervals: list[dict], switch_s, *, width: int = 380, height: int = 140, serial="") -> tuple[str, list]:
    """An SVG step plot of interval energy (Wh) against time, and notes for beneath it: the
    intervals before the switch in one colour, after it in another, the switch a dashed line,
    estimated intervals overlaid, other flags as ticks under the axis, missing intervals a band.
    It draws at most WINDOW intervals on each side of the switch."""
    recs = sorted(intervals, key=lambda r: r["start"])
    if switch_s is None:
        shown = recs[-2 * WINDOW:]
    else:
        before = [r for r in recs if r["start"] < switch_s]
        shown = before[-WINDOW:] + [r for r in recs if r["start"] >= switch_s][:WINDOW]
    notes = [] if len(shown) == len(recs) else [f"{len(shown)} of {len(recs)} intervals shown, around the switch"]
    left, right, top, bottom = 44, 8, 16, 22
    pw, ph = width - left - right, height - top - bottom
    t_lo = shown[0]["start"]
    t_hi = shown[-1]["start"] + shown[-1]["duration_s"]
    if switch_s is not None:
        t_lo, t_hi = min(t_lo, switch_s), max(t_hi, switch_s)
    span = max(t_hi - t_lo, 1)
    wh = [r["energy_mwh"] / 1000 for r in shown]
    y_hi = _nice(max(max(wh), 0)) or 1
    y_lo = -_nice(-min(min(wh), 0))

    def x(t):
        return left + (t - t_lo) / span * pw

    def y(v):
        return top + (y_hi - v) / (y_hi - y_lo) * ph

    base = _n(y(0))
    series, marks, gaps = [], [], 0
    run, side_of_run = [], None

    def close_run():
        if run:
            d = f"M{_n(x(run[0]['start']))},{base}" + "".join(
                f"V{_n(y(r['energy_mwh'] / 1000))}H{_n(x(r['start'] + r['duration_s']))}" for r in run) + f"V{base}Z"
            series.append(f'<path class="{side_of_run}" d="{d}"/>')

    for i, r in enumerate(shown):
        side = "after" if switch_s is not None and r["start"] >= switch_s else "before"
        prev = shown[i - 1] if i else None
        gap_from = prev["start"] + prev["duration_s"] if prev else None
        if prev and r["start"] > gap_from:
            missing = (r["start"] - gap_from) // max(prev["duration_s"], 1) or 1
            gaps += missing
            marks.append(f'<rect class="gap" x="{_n(x(gap_from))}" y="{top}" width="{_n(x(r["start"]) - x(gap_from))}" '
                         f'height="{ph}"><title>{missing} interval(s) missing</title></rect>')
        if side != side_of_run or (prev and r["start"] > gap_from):
            close_run()
            run, side_of_run = [], side
        run.append(r)
        flags = _flags(r)
        x0, x1 = x(r["start"]), x(r["start"] + r["duration_s"])
        if "estimated" in flags:
            y0, y1 = sorted((y(r["energy_mwh"] / 1000), y(0)))
            marks.append(f'<rect class="estimated" x="{_n(x0)}" y="{_n(y0)}" width="{_n(x1 - x0)}" '
                         f'height="{_n(max(y1 - y0, 1))}"><title>interval {esc(r.get("seq"))}: estimated</title></rect>')
        other = sorted(flags - {"estimated"})
        if other:
            xm, yb = (x0 + x1) / 2, top + ph
            marks.append(f'<path class="flagged" d="M{_n(xm)},{_n(yb + 1)}l-3.5,6h7z"><title>interval '
                         f'{esc(r.get("seq"))}: {esc(", ".join(other))}</title></path>')
    close_run()
    if gaps:
        notes.append(f"{gaps} interval(s) missing")
    estimated = sum("estimated" in _flags(r) for r in shown)
    if estimated:
        notes.append(f"{estimated} estimated")
    axis_y = top + ph
    parts = [f'<svg class="plot" data-points="{len(shown)}" data-serial="{esc(serial)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" style="max-width:{width}px" role="img" xmlns="http://www.w3.org/2000/svg">'
             f'<title>{esc(serial)}: interval energy (Wh) around the switch</title>',
             "".join(m for m in marks if m.startswith('<rect class="gap"')),
             f'<g class="series">{"".join(series)}</g>',
             "".join(m for m in marks if not m.startswith('<rect class="gap"')),
             f'<path class="axis" d="M{left},{top}V{axis_y}H{left + pw}"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y_hi:g} Wh</text>',
             f'<text x="{left - 4}" y="{_n(min(y(y_lo), axis_y) + 3)}" text-anchor="end">{y_lo:g}</text>',
             f'<text x="{left}" y="{height - 4}">{esc(_clock(t_lo, span))}</text>',
             f'<text x="{left + pw}" y="{height - 4}" text-anchor="end">{esc(_clock(t_hi, span))}</text>']
    if y_lo < 0:
        parts.append(f'<path class="axis" d="M{left},{base}H{left + pw}"/>')
    if switch_s is not None:
        xs = x(switch_s)
        anchor = "start" if xs < left + pw * 0.2 else "end" if xs > left + pw * 0.8 else "middle"
        parts.append(f'<line class="switch" x1="{_n(xs)}" y1="{top - 2}" x2="{_n(xs)}" y2="{axis_y}"/>'
                     f'<text class="switch-label" x="{_n(xs)}" y="{top - 5}" text-anchor="{anchor}">'
                     f'switch {esc(_clock(switch_s, span))}</text>')
    return "".join(parts) + "</svg>", notes


# --- checks of the input ------------------------------------------------------------------------

def _check_campaign(c) -> None:
    if not isinstance(c, dict):
        raise CommandError("campaign report: the campaign must be a dict")
    for key in ("name", "state", "waves", "meters"):
        if key not in c:
            raise CommandError(f"campaign report: the campaign has no {key!r}")
    if c["state"] not in CAMPAIGN_STATES:
        raise CommandError(f"campaign report: state {c['state']!r} is none of {', '.join(CAMPAIGN_STATES)}")
    if not isinstance(c["waves"], list) or not isinstance(c["meters"], list):
        raise CommandError("campaign report: 'waves' and 'meters' must be lists")
    for i, w in enumerate(c["waves"]):
        if not isinstance(w, dict):
            raise CommandError(f"campaign report: wave {i} is not a record")
    for i, m in enumerate(c["meters"]):
        if not isinstance(m, dict) or m.get("serial") in (None, ""):
            raise CommandError(f"campaign report: meter {i} has no serial")
        if m.get("result") not in METER_RESULTS:
            raise CommandError(f"campaign report: meter {m['serial']!r} has result {m.get('result')!r}, "
                               f"none of {', '.join(METER_RESULTS)}")
        for j, rec in enumerate(m.get("intervals") or ()):
            _check_interval(rec, f"campaign report: meter {m['serial']!r}, interval record {j}")


def _check_interval(rec, where: str) -> None:
    if not isinstance(rec, dict):
        raise CommandError(f"{where} is not a record")
    for key in ("start", "duration_s", "energy_mwh"):
        if not isinstance(rec.get(key), (int, float)) or isinstance(rec.get(key), bool):
            raise CommandError(f"{where} has no number {key!r}")


# --- small helpers ------------------------------------------------------------------------------

def _page(title: str, body: list[str]) -> str:
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _facts(pairs) -> str:
    return ('<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs
                                           if v not in (None, "")) + "</dl>")


def _pair(r: dict, first: str, second: str) -> str | None:
    if first not in r and second not in r:
        return None
    return f"{r.get(first, '?')} / {r.get(second, '?')}"


def _activation(r: dict) -> str | None:
    when = r.get("when")
    if when == "at" and r.get("at_s") is not None:
        return f"at {_when(r['at_s'])}"
    deferred = r.get("activation_deferred_s")
    return (when or "") + (f", deferred {deferred} s" if deferred else "") or None


def _when(epoch_s) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(epoch_s, span_s) -> str:
    """A time for an axis: seconds when the plot spans under an hour, the date when over a day."""
    t = datetime.fromtimestamp(epoch_s, timezone.utc)
    return t.strftime("%H:%M:%S" if span_s < 3600 else "%H:%M" if span_s < 86400 else "%m-%d %H:%M")


def _unit(value, unit: str) -> str | None:
    return None if value is None else f"{value:,} {unit}" if isinstance(value, int) else f"{value} {unit}"


def _int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else esc(value if value is not None else 0)


def _n(v: float) -> str:
    """A coordinate, short: the page carries thousands of them."""
    s = f"{v + 0.0:.1f}".replace("-0.0", "0.0")
    return s[:-2] if s.endswith(".0") else s


def _nice(v: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least v (0 for 0)."""
    if v <= 0:
        return 0
    p = 10 ** math.floor(math.log10(v))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= v * (1 - 1e-9))
