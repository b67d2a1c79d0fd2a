"""The HTML reports: what a browser draws of them (headless Chromium, the Debian package), and
without a browser: escaping, which meters a large fleet plots, and the size of a 10,000-meter page."""
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser

import pytest

from meterfw import html_report
from meterfw.errors import CommandError

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
INTERVAL_S = 900


def intervals(n_before=8, n_after=8, *, skip=(), estimated=(), flagged=None, start=T0):
    """A meter's records: n_before intervals, the switch, n_after intervals; `skip` leaves out
    those indexes (a gap), `estimated` flags those, the first after the switch is firmware-change."""
    out, register = [], 1_000_000
    for i in range(n_before + n_after):
        energy = 150_000 + 40_000 * (i % 4)
        register += energy
        if i in skip:
            continue
        flags = ["estimated"] if i in estimated else []
        if i == n_before:
            flags.append("firmware-change")
        if flagged and i in flagged:
            flags.append(flagged[i])
        out.append({"seq": 100 + i, "start": start + i * INTERVAL_S, "duration_s": INTERVAL_S,
                    "energy_mwh": energy, "register_mwh": register, "flags": flags})
    return out


def meter(serial, result="confirmed", *, wave=1, reason=None, warnings=(), recs=None, intact=True, problems=()):
    recs = intervals() if recs is None else recs
    return {"serial": serial, "wave": wave, "result": result, "reason": reason, "warnings": list(warnings),
            "from_version": "1.2.0", "to_version": "1.3.0",
            "switch_s": next((r["start"] for r in recs if "firmware-change" in r["flags"]), None),
            "intervals": recs, "reconciliation": {"intact": intact, "problems": list(problems)}}


def campaign(meters, state="running"):
    by_wave = {}
    for m in meters:
        by_wave.setdefault(m["wave"], []).append(m)
    waves = []
    for index, ms in sorted(by_wave.items()):
        results = {k: sum(m["result"] == k for m in ms) for k in html_report.WAVE_SEGMENTS}
        results["warned"] = sum(bool(m["warnings"]) for m in ms)
        waves.append({"index": index, "name": f"wave {index}", "state": "running", "meters": len(ms),
                      "results": results})
    return {"name": "spring 2026", "id": "c-42", "state": state, "image": {"version": "1.3.0", "image_id": "ab" * 32},
            "created_s": T0, "updated_s": T0 + 7200, "waves": waves, "meters": meters}


def small_campaign():
    return campaign([
        meter("MTR-0001"),
        meter("MTR-0002", "reverted", reason="health check metering (critical) failed"),
        meter("MTR-0003", wave=2, recs=intervals(skip=(9, 10), estimated=(11, 12), flagged={5: "power-down"}),
              warnings=["2 intervals estimated after a power cut"], intact=False,
              problems=["2 interval(s) missing since the upgrade started"]),
        meter("MTR-0004", "failed", wave=2, reason="no verdict from the meter within 57 s of activation"),
    ])


class Page(HTMLParser):
    """What a page holds, as a parser sees it: every tag, the plots' attributes, the text."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.plots, self.classes, self.texts = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.classes += (a.get("class") or "").split()
        if tag == "svg" and "plot" in (a.get("class") or "").split():
            self.plots.append(a)

    def handle_data(self, data):
        self.texts.append(data)

    def text(self):
        return "".join(self.texts)


# --- in a browser -------------------------------------------------------------------------------

# Measures, once the page has loaded, every plot's drawn series: a plot counts as rendered when
# the browser laid its series out with a non-zero width and height. The count lands on <body>,
# where --dump-dom shows it.
_PROBE = """<script>
addEventListener("load", () => {
  const plots = [...document.querySelectorAll("svg.plot")];
  const drawn = plots.filter(svg => { const b = svg.querySelector("g.series").getBBox(); return b.width > 0 && b.height > 0; });
  const switches = plots.filter(svg => { const l = svg.querySelector("line.switch"); return l && l.getBBox().height > 0; });
  document.body.setAttribute("data-plots", plots.length);
  document.body.setAttribute("data-plots-drawn", drawn.length);
  document.body.setAttribute("data-switches-drawn", switches.length);
});
</script>"""


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed, and CI's setup installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed: apt-get install chromium (Debian package)")
    return path


def run_browser(args, tmp_path):
    """Headless Chromium with its own profile; its whole process group ends with the call."""
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)  # a guard against a hung browser, not a measure
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its renderer and zygote processes too, if any are left
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    return out


def test_chromium_renders_every_meters_plot(tmp_path):
    c = small_campaign()
    page = html_report.render_campaign(c)
    path = tmp_path / "campaign.html"
    html_report.write(path, page.replace("</body>", _PROBE + "</body>"))
    dom = run_browser(["--dump-dom", path.as_uri()], tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-plots="4"' in body, body
    assert 'data-plots-drawn="4"' in body, body
    assert 'data-switches-drawn="4"' in body, body


def test_chromium_renders_a_single_upgrade(tmp_path):
    report = {"result": "confirmed", "reason": None, "serial": "MTR-0009", "board": "sim", "from_version": "1.2.0",
              "to_version": "1.3.0", "activate_at_s": T0 + 8 * INTERVAL_S, "discrepancies": [],
              "intervals_missed": 0, "intervals_duplicated": 0, "energy_conserved": True}
    path = tmp_path / "upgrade.html"
    html_report.write(path, html_report.render_upgrade(report, intervals()).replace("</body>", _PROBE + "</body>"))
    body = re.search(r"<body[^>]*>", run_browser(["--dump-dom", path.as_uri()], tmp_path)).group(0)
    assert 'data-plots-drawn="1"' in body and 'data-switches-drawn="1"' in body, body


# --- without a browser --------------------------------------------------------------------------

def test_each_plot_counts_the_intervals_it_draws_and_marks_estimates_flags_and_gaps():
    page = Page(html_report.render_campaign(small_campaign()))
    points = {p["data-serial"]: int(p["data-points"]) for p in page.plots}
    assert points == {"MTR-0001": 16, "MTR-0002": 16, "MTR-0003": 14, "MTR-0004": 16}
    assert page.classes.count("estimated") - 1 == 2  # the two estimated intervals, besides the legend's swatch
    assert page.classes.count("gap") - 1 == 1  # one band over the two missing intervals
    assert page.classes.count("switch") - 1 == 4
    text = page.text()
    assert "2 interval(s) missing" in text and "billing data intact" in text
    assert "health check metering (critical) failed" in text


def test_text_from_a_meter_is_shown_as_text_never_as_markup():
    evil = "<script>alert('x')</script>"
    c = campaign([meter(evil, "failed", reason=f"bad {evil}", warnings=[evil], recs=intervals()),
                  meter("MTR-1", recs=[])])
    c["name"] = evil
    source = html_report.render_campaign(c)
    page = Page(source)
    assert "script" not in page.tags
    assert evil in page.text()  # the browser shows the characters themselves
    assert "<script>" not in source
    report = {"result": "rejected", "reason": evil, "serial": evil, "from_version": evil, "to_version": "1"}
    single = Page(html_report.render_upgrade(report, []))
    assert "script" not in single.tags and evil in single.text()


def test_a_large_fleet_plots_its_failed_reverted_and_warned_meters_and_a_sample():
    meters = [meter(f"M{i:04d}", wave=1 + i // 40) for i in range(200)]
    for i in (3, 50, 120):
        meters[i]["result"], meters[i]["reason"] = "failed", "transfer stalled"
    for i in (7, 199):
        meters[i]["result"], meters[i]["reason"] = "reverted", "health check failed"
    meters[77]["warnings"] = ["clock moved by +3.0 s"]
    meters[88]["reconciliation"] = {"intact": False, "problems": ["interval 105 changed"]}
    page = Page(html_report.render_campaign(campaign(meters)))
    plotted = [p["data-serial"] for p in page.plots]
    notable = ["M0003", "M0050", "M0120", "M0007", "M0199", "M0077", "M0088"]
    assert plotted[:7] == notable  # failed first, then reverted, then warned
    sample = plotted[7:]
    assert len(sample) == html_report.SAMPLE_SIZE and not set(sample) & set(notable)
    assert len({int(s[1:]) // 40 for s in sample}) == 5  # the sample spreads over every wave
    assert "200 meters: plotted are 7 failed, reverted or warned meters" in page.text()


def test_a_fleet_of_sixty_plots_every_meter_and_says_nothing_of_a_sample():
    page = Page(html_report.render_campaign(campaign([meter(f"M{i}") for i in range(60)])))
    assert len(page.plots) == 60 and "sample" not in page.text()


def test_ten_thousand_meters_make_a_page_of_a_few_megabytes():
    recs = intervals(96, 96)  # two days of 15-minute intervals each
    meters = [meter(f"MTR-{i:05d}", wave=1 + i // 1000, recs=recs) for i in range(10_000)]
    for i in range(0, 10_000, 20):  # 500 failures: more than the page plots
        meters[i]["result"], meters[i]["reason"] = "failed", f"reason {i % 7}"
    page_text = html_report.render_campaign(campaign(meters))
    assert len(page_text.encode()) < 3_000_000
    page = Page(page_text)
    assert len(page.plots) == html_report.NOTABLE_MAX + html_report.SAMPLE_SIZE
    assert all(int(p["data-points"]) == 2 * html_report.WINDOW for p in page.plots)
    assert "the first 200 of 500; the failure-reasons table counts them all" in page.text()
    assert "and 59 more" in page.text()  # a reason's 71 or 72 meters: 12 named, the rest counted


def test_a_single_upgrade_page_holds_the_verdict_the_transfer_and_the_problems():
    report = {"result": "reverted", "reason": "the meter went back to the previous image", "serial": "MTR-7",
              "from_version": "1.2.0", "to_version": "1.3.0", "activate_at_s": None, "transfer_seconds": 12.5,
              "bytes_on_wire": 60_000, "image_bytes": 58_000, "method": "full", "transfer_bytes_per_s": 4800,
              "discrepancies": ["meter clock moved by +3.0 s against the host's"], "energy_conserved": False,
              "interval_energy_mwh": 10, "register_delta_mwh": 12}
    page = Page(html_report.render_upgrade(report, intervals()))
    text = page.text()
    assert [p["data-points"] for p in page.plots] == ["16"]
    assert "switch 02:00" in text  # from the firmware-change flag, as no activation time was given
    assert "meter clock moved by +3.0 s against the host's" in text and "energy not conserved" in text
    assert "billing data intact" not in text and "58,000 bytes" in text


def test_a_rejected_upgrade_has_no_plot_and_no_reconciliation():
    page = Page(html_report.render_upgrade({"result": "rejected", "reason": "image is for board pico",
                                            "from_version": None, "to_version": "1.3.0"}, []))
    assert page.plots == [] and "no interval data" in page.text() and "not reconciled" in page.text()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("meters"), "the campaign has no 'meters'"),
    (lambda c: c.update(state="done"), "state 'done' is none of running"),
    (lambda c: c["meters"][0].update(result="ok"), "meter 'MTR-0001' has result 'ok'"),
    (lambda c: c["meters"][1].update(serial=""), "meter 1 has no serial"),
    (lambda c: c["meters"][2]["intervals"][0].pop("start"), "interval record 0 has no number 'start'"),
])
def test_a_bad_campaign_gets_one_clear_line(change, message):
    c = small_campaign()
    change(c)
    with pytest.raises(CommandError, match=re.escape(message)):
        html_report.render_campaign(c)


def test_writing_to_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="cannot write .*: No such file or directory"):
        html_report.write(tmp_path / "no" / "report.html", "<p>")
