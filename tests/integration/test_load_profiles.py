"""The premises' load profiles (hil/metrology.py): the sim front-end (MicroPython), the host's
twin (CPython) and the emulated Pico's front-end (JavaScript) count the same energy, and a meter
on every premises upgrades, reverts and passes its health check judged by what a real meter
there would show. Vacant and commercial premises also lose power at a flash operation."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil import metrology
from hil.metrology import PROFILES, RATED_W, at_local_time, energies_in_second, load_curve
from hil.pytest_plugin import INTERVAL_S, SEED, SimFactory, start_dut, MeterBoard
from meterfw.upgrade import continuity

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXACT_UNLESS = {"estimated", "partial", "clock-set"}  # energy not read at both boundaries

# Each premises at the hour of its day that shows what it is, whenever the test runs.
AT = {"mixed": None, "residential": 19 * 3600, "vacant": 3 * 3600, "solar": 12 * 3600 + 1800,
      "commercial": 11 * 3600}
SPECS = ["mixed", "residential@+05:30", "vacant", "solar@-07:00", "commercial@+10:00"]
SECONDS = [0, 1, 3599, 3600, 43199, 43200, 86399, 1_764_000_000, 1_764_043_217, 2_000_000_000] + \
    [1_764_633_600 + k * 1297 for k in range(67)]  # a day in steps, off the hour


# --- the three front-ends agree --------------------------------------------------------------

def _micropython(curves, seeds):
    script = ("import sys, json\nsys.path.insert(0, %r)\nfrom metrology import energies_in_second as f\n"
              "print(json.dumps([[f(seed, c, s) for s in %r] for c in %r for seed in %r]))\n"
              % (str(ROOT / "boards" / "sim"), SECONDS, curves, seeds))
    out = subprocess.run([str(BIN / "micropython"), "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [[tuple(e) for e in row] for row in json.loads(out.stdout)]


def _node(curves, seeds):
    script = ("import { energiesInSecond as f } from %s;\n"
              "const [seconds, curves, seeds] = JSON.parse(require_stdin());\n" % json.dumps(
                  (ROOT / "hil" / "pico" / "parts.mjs").as_uri()))
    script = script.replace("require_stdin()", "(await import('node:fs')).readFileSync(0, 'utf8')")
    script += ("console.log(JSON.stringify(curves.flatMap((c) => seeds.map((seed) =>"
               " seconds.map((s) => f(seed, c, s))))));\n")
    out = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps([SECONDS, curves, seeds]),
                         capture_output=True, text=True, timeout=60, cwd=ROOT / "hil" / "pico")
    assert out.returncode == 0, out.stderr
    return [[tuple(e) for e in row] for row in json.loads(out.stdout)]


def test_sim_front_end_twin_and_pico_front_end_agree_for_every_profile():
    curves = [load_curve(spec) for spec in SPECS]
    seeds = [1, SEED, 2**31 + 12345]
    twin = [[energies_in_second(seed, c, s) for s in SECONDS] for c in curves for seed in seeds]
    assert _micropython(curves, seeds) == twin
    assert _node(curves, seeds) == twin
    counting = [tuple(row) for row in twin if any(d or r for d, r in row)]
    assert len(set(counting)) == len(counting) == len(twin) - len(seeds)  # all but vacant, each its own


def test_the_mixed_load_keeps_the_numbers_every_other_test_was_written_against():
    # Pinned from the twin as it stood before the profiles came: the default load is unchanged.
    assert load_curve(None) is load_curve("mixed") is None
    assert [energies_in_second(SEED, None, s) for s in (1_764_633_600, 1_764_633_610)] == [(213, 0), (538, 228)]
    assert metrology.true_energies(SEED, 1_764_633_600, 1_764_633_660) == (24174, 2544)


def test_each_profile_is_the_premises_it_names():
    day = range(1_764_633_600, 1_764_633_600 + 86400, 7)  # a UTC day, every 7th second
    watts = {name: [[e * 18 // 5 for e in energies_in_second(SEED, load_curve(name), s)] for s in day]
             for name in PROFILES}
    assert all(w == [0, 0] for w in watts["vacant"])
    assert metrology.true_energies(SEED, 1_764_633_600, 1_764_633_600 + 3 * 86400, "vacant") == (0, 0)
    by_hour = {name: [[w for s, w in zip(day, ws) if (s % 86400) // 3600 == h] for h in range(24)]
               for name, ws in watts.items()}
    mean = {name: [sum(d for d, _ in hs) // len(hs) for hs in h24] for name, h24 in by_hour.items()}
    res = mean["residential"]
    assert max(res[0:5]) < 400 and res[7] > 1500 and max(res[17:22]) > 2800 and min(res[10:16]) < 800
    noon = [w for h in range(10, 15) for w in by_hour["solar"][h]]
    assert all(d == 0 and r > 0 for d, r in noon)                       # exporting at midday
    assert all(r == 0 for h in (*range(0, 6), *range(19, 24)) for _, r in by_hour["solar"][h])
    assert mean["solar"][19] > 2500                                     # importing in the evening peak
    assert all(w[1] == 0 for name in ("residential", "commercial") for w in watts[name])
    shop = [d for h in range(8, 18) for d, _ in by_hour["commercial"][h]]
    assert 0.85 * RATED_W < sum(shop) / len(shop) and max(d for d, _ in watts["commercial"]) < RATED_W


def test_a_premises_runs_on_its_local_time():
    now = 1_764_650_000  # 04:33:20 UTC
    spec = at_local_time("solar", 12 * 3600 + 1800, now)
    local_s = (now + load_curve(spec)["utc_offset_s"]) % 86400
    assert spec == "solar@+07:56" and 0 <= 12 * 3600 + 1800 - local_s < 60
    assert energies_in_second(SEED, load_curve(spec), now)[0] == 0      # noon there: exporting
    assert energies_in_second(SEED, load_curve("solar"), now)[1] == 0   # before dawn in UTC


# --- meterfw-sim start --load ----------------------------------------------------------------

@pytest.mark.parametrize("spec", ["office", "solar@+15:00", "SOLAR", "solar@10:00"])
def test_a_bad_profile_is_one_line_and_starts_nothing(tmp_path, spec):
    d = tmp_path / "m"
    out = subprocess.run([str(BIN / "meterfw-sim"), "start", "--dir", str(d), "--load", spec],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.startswith("meterfw-sim: ") and out.stderr.count("\n") == 1 and spec in out.stderr
    assert not d.exists()


def test_start_help_documents_every_profile():
    out = subprocess.run([str(BIN / "meterfw-sim"), "start", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--load PROFILE" in out.stdout
    text = " ".join(out.stdout.split())
    for name in PROFILES:
        assert name in text, name


# --- a meter on every premises ---------------------------------------------------------------

def cli_json(board, *args):
    proc = subprocess.run([str(BIN / "meterfw"), "--port", board.port, "--keys", str(board.keys_dir), *args,
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def twin_mismatches(records, board, load):
    """Intervals whose energy (delivered, received) differs from the twin's with `load`, the
    whole window's totals included: [] when the meter counted what that premises drew."""
    on_time = [r for r in records if not EXACT_UNLESS & set(r["flags"])]
    bad = [r["seq"] for r in on_time if (r["energy_mwh"], r["received_mwh"])
           != metrology.true_energies(board.seed, r["start"], r["start"] + r["duration_s"], load)]
    a, b = on_time[0], on_time[-1]
    window = [r for r in records if a["seq"] < r["seq"] <= b["seq"]]
    total = (sum(r["energy_mwh"] for r in window), sum(r["received_mwh"] for r in window))
    if total != metrology.true_energies(board.seed, a["start"] + a["duration_s"], b["start"] + b["duration_s"], load):
        bad.append("window")
    return bad


def assert_every_interval_intact_and_true(board, records):
    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    for prev, r in zip(records, records[1:]):
        assert r["register_mwh"] - prev["register_mwh"] == r["energy_mwh"], r
        assert r["register_received_mwh"] - prev["register_received_mwh"] == r["received_mwh"], r
    assert twin_mismatches(records, board, board.load) == []
    # The check can fail: the twin of another premises does not match this meter's intervals.
    other = "mixed" if board.load.startswith("vacant") else "vacant"
    assert twin_mismatches(records, board, other) != []


def assert_healthy(board):
    rc, r = cli_json(board, "health")
    items = {i["check"]: i for i in r["items"]}
    assert rc == 0 and r["ok"], items
    assert items["metrology"]["status"] == "pass", items["metrology"]
    return items["metrology"]


def assert_shows_its_premises(board, records):
    """The intervals show the premises: nothing at all, export at noon, near the rating."""
    on_time = [r for r in records if not EXACT_UNLESS & set(r["flags"])]
    d = sum(r["energy_mwh"] for r in on_time)
    rx = sum(r["received_mwh"] for r in on_time)
    avg_w = d * 18 // 5 // sum(r["duration_s"] for r in on_time)
    name = board.load.split("@")[0]
    if name == "vacant":
        assert d == rx == 0
    elif name == "solar":
        assert d == 0 and rx > 0
    elif name == "commercial":
        assert 0.85 * RATED_W < avg_w < RATED_W
    else:
        assert d > 0


@pytest.fixture(scope="module", params=list(AT))
def premises(request, tmp_path_factory, images, keys_dir, dut):
    """One sim meter per premises, running image v1, for the scenarios below in order."""
    if dut.kind != "sim":
        pytest.skip("the load profiles' scenarios run on the sim (the Pico case is in tests/pico)")
    name = request.param
    load = name if AT[name] is None else at_local_time(name, AT[name])
    factory = SimFactory(tmp_path_factory.mktemp(f"premises-{name}"))
    sim = start_dut(factory, dut, images["v1"], keys_dir, INTERVAL_S, SEED, load=load)
    yield MeterBoard(sim, SEED, INTERVAL_S, keys_dir, dut.kind, load)
    assert not factory.close()


def test_health_passes_on_every_premises(premises):
    premises.wait_intervals(2)
    item = assert_healthy(premises)
    assert (item["value"] == 0) == premises.load.startswith("vacant")


def test_upgrade_confirmed_on_every_premises(premises, images):
    rc, report = cli_json(premises, "upgrade", str(images["v2"]))
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["intervals_missed"] == 0 and report["energy_conserved"] and not report.get("discrepancies")
    _, st = cli_json(premises, "status")
    assert st["active_version"] == "1.1.0" and st["confirmed"]
    assert all(h["ok"] for h in st["health"]), st["health"]  # the trial boot's own check
    records = premises.wait_intervals(len(cli_json(premises, "read", "intervals")[1]) + 1)
    assert_every_interval_intact_and_true(premises, records)
    assert_shows_its_premises(premises, records)
    assert any("firmware-change" in r["flags"] for r in records)


def test_revert_on_every_premises(premises):
    rc, r = cli_json(premises, "revert")
    assert rc == 0 and (r["result"], r["from_version"], r["to_version"], r["discrepancies"]) == (
        "reverted", "1.1.0", "1.0.0", []), r
    _, st = cli_json(premises, "status")
    assert st["active_version"] == "1.0.0" and st["confirmed"] and st["boot_reason"] == "revert"
    records = premises.wait_intervals(len(cli_json(premises, "read", "intervals")[1]) + 2)
    assert_every_interval_intact_and_true(premises, records)
    assert_healthy(premises)


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_power_cut_at_an_interval_close(premises, torn):
    """The power goes at the next flash write (an interval's record, or the open interval's),
    on the premises where it matters most: no energy at all, and a load near the rating."""
    if not premises.load.startswith(("vacant", "commercial")):
        pytest.skip("power cuts run on the vacant and commercial premises")
    boots = premises.state()["boots"]
    premises.cut_at(1, torn=torn)
    premises.wait_boots(boots + 1, timeout=30)
    m = premises.meter()
    try:
        assert m.wait_until(lambda s: s.get("health") is not None, 30) is not None, premises.console()[-2000:]
    finally:
        m.link.close()
    n = len(cli_json(premises, "read", "intervals")[1])
    records = premises.wait_intervals(n + 2)
    assert "power-down" in {f for r in records for f in r["flags"]}
    assert_every_interval_intact_and_true(premises, records)
    assert_healthy(premises)
