"""Campaigns over simulated meters running our firmware, through the `meterfw` CLI an operator
uses: waves that confirm and a rollback that undoes them; a bad image that trips the error
threshold and leaves the meters it never reached as they were; and a campaign process killed
mid-transfer that, started again, finishes the meter with nothing done twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hil.pytest_plugin import build_variants
from meterfw import mdms
from meterfw.session import Meter
from meterfw.store import Store
from meterfw.transport import Link

MFW = str(Path(sys.executable).parent / "meterfw")
INTERVAL_S = 3


def mfw(*args, check=True, timeout=300):
    proc = subprocess.run([MFW, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def mfw_json(*args, **kw):
    return json.loads(mfw(*args, "--json", **kw).stdout)


def start_fleet(sim_factory, image, keys_dir, db, n, *, baud=None, test=1):
    boards = [sim_factory(image=image, keys=keys_dir, interval_s=INTERVAL_S, seed=20 + i, serial=f"CM{i}",
                          **({"baud": baud} if baud else {})) for i in range(n)]
    csv = db.parent / "fleet.csv"
    csv.write_text("serial,board,url,area,tags,test_population\n" + "".join(
        f"CM{i},sim,{b.port},north,street,{'yes' if i < test else 'no'}\n" for i, b in enumerate(boards)))
    assert mfw_json("fleet", "import", csv, "--db", db)["added"] == n
    return boards


def status(board) -> dict:
    with Link(board.port, timeout_s=3) as link:
        return Meter(link).status()


def events(board) -> list[dict]:
    with Link(board.port, timeout_s=3) as link:
        return Meter(link).read_events()


def test_waves_confirm_every_meter_then_a_rollback_undoes_them(sim_factory, images, keys_dir, tmp_path):
    db = tmp_path / "office.db"
    boards = start_fleet(sim_factory, images["v1"], keys_dir, db, 3)
    found = mfw_json("fleet", "discover", "--db", db)
    assert [(r["serial"], r["version"]) for r in found] == [("CM0", "1.0.0"), ("CM1", "1.0.0"), ("CM2", "1.0.0")]
    mfw("campaign", "create", "c1", "--image", images["v2"], "--keys", keys_dir, "--db", db, "--waves", "1,100%",
        "--min-executed", "1")
    s = mfw_json("campaign", "run", "c1", "--keys", keys_dir, "--db", db, "--report", tmp_path / "c1.html")
    assert s["state"] == "completed"
    assert [(w["name"], w["state"], w["results"]["confirmed"]) for w in s["waves"]] == [
        ("test population", "succeeded", 1), ("wave 1", "succeeded", 1), ("wave 2", "succeeded", 1)]
    assert all(status(b)["active_version"] == "1.1.0" for b in boards)
    # The snapshots went into the meter data: intervals on both sides of each switch.
    with Store(str(db)) as store:
        for m in mfw_json("campaign", "status", "c1", "--db", db, "--meters")["meters"]:
            recs = mdms.intervals(store, m["serial"])
            assert recs[0]["start"] < m["switch_s"] <= recs[-1]["start"] + recs[-1]["duration_s"], m
    assert (tmp_path / "c1.html").read_text().count('class="plot"') == 3
    rec = mfw_json("mdms", "reconcile", "c1", "--db", db)
    assert rec["intact"] and [w["intact"] for w in rec["waves"]] == [1, 1, 1], rec

    # The MDMS's follow-up read (FR18): an interval lost and one corrupted on their way into the
    # database are read again from the meter, not estimated; the exception report says so.
    with Store(str(db)) as store:
        recs = _wait(lambda: mfw_json("mdms", "read", "--db", db, "--meter", "CM1") and
                     len(mdms.intervals(store, "CM1")) >= 6 and mdms.intervals(store, "CM1"), 30, "six intervals")
        lost, bad = recs[2], recs[4]
        store.x("DELETE FROM intervals WHERE serial = 'CM1' AND start = ?", (lost["start"],))
        store.x("UPDATE intervals SET energy_mwh = energy_mwh + 999 WHERE serial = 'CM1' AND start = ?",
                (bad["start"],))
    out = mfw_json("mdms", "vee", "--db", db, "--meter", "CM1")
    actions = {(r["start"], r["rule"]): r["action"] for r in out["exceptions"]}
    assert actions[(lost["start"], "gap")] == "re-read" and actions[(bad["start"], "sum_check")] == "re-read", actions
    with Store(str(db)) as store:
        again = {r["start"]: r for r in mdms.intervals(store, "CM1")}
        assert again[lost["start"]]["energy_mwh"] == lost["energy_mwh"]
        assert again[bad["start"]]["energy_mwh"] == bad["energy_mwh"]
        # Without the meter's help, a lost interval is estimated, and the audit trail keeps it.
        store.x("DELETE FROM intervals WHERE serial = 'CM1' AND start = ?", (lost["start"],))
    out = mfw_json("mdms", "vee", "--db", db, "--meter", "CM1", "--no-follow-up")
    assert [(r["start"], r["action"]) for r in out["exceptions"] if r["rule"] == "gap"] == [
        (lost["start"], "estimated by interpolation")]
    (edit,) = mfw_json("mdms", "audit", "--db", db, "--meter", "CM1")
    assert (edit["start"], edit["rule"], edit["original"], edit["method"]) == (lost["start"], "gap", None,
                                                                               "interpolation")
    assert edit["estimate_mwh"] == lost["energy_mwh"]  # the registers either side pin it exactly

    mfw("campaign", "rollback", "c1", "--db", db)
    s = mfw_json("campaign", "run", "c1-rollback", "--keys", keys_dir, "--db", db)
    assert s["state"] == "completed" and s["totals"]["confirmed"] == 3, s
    assert all(status(b)["active_version"] == "1.0.0" for b in boards)


def test_a_bad_image_trips_the_error_threshold_and_leaves_the_rest_as_they_were(sim_factory, images, keys_dir,
                                                                                tmp_path):
    bad = build_variants(tmp_path / "variants", "sim", keys_dir, ["critical_health"])["critical_health"]
    db = tmp_path / "office.db"
    boards = start_fleet(sim_factory, images["v1"], keys_dir, db, 3)
    mfw("campaign", "create", "bad", "--image", bad, "--keys", keys_dir, "--db", db, "--waves", "1,100%",
        "--error-threshold", "1", "--min-executed", "1", "--ack", "immediate")
    proc = mfw("campaign", "run", "bad", "--keys", keys_dir, "--db", db, "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert s["state"] == "aborted" and "error threshold 1 reached" in s["reason"]
    assert s["totals"]["reverted"] == 1 and s["totals"]["skipped"] == 2
    reverted = status(boards[0])
    assert reverted["active_version"] == "1.0.0" and reverted["update"]["result"] == "reverted"
    for b in boards[1:]:  # never reached: no notice, no transfer, nothing in their logs
        st = status(b)
        assert st["active_version"] == "1.0.0" and st["slots"]["b"]["version"] is None
        assert not [e for e in events(b) if e["code"] in (105, 17, 18)]


def _wait(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_campaign_killed_mid_transfer_resumes_with_nothing_done_twice(sim_factory, images, keys_dir, tmp_path):
    db = tmp_path / "office.db"
    (board,) = start_fleet(sim_factory, images["v1"], keys_dir, db, 1, baud=38400)
    mfw("campaign", "create", "k", "--image", images["v2"], "--keys", keys_dir, "--db", db, "--waves", "100%")
    run = [MFW, "campaign", "run", "k", "--keys", str(keys_dir), "--db", str(db), "--json"]
    first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        with Store(str(db)) as store:
            _wait(lambda: store.one("SELECT stage FROM campaign_meters WHERE serial = 'CM0'")[0] == "transfer",
                  120, "the transfer to start")
        time.sleep(3)  # some blocks in (about 4 KB/s at 38400 baud), the campaign dies
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
    sent = status(board)["update"]["first_not_transferred_block"]  # the port is free: one reader at a time
    assert sent >= 1
    s = mfw_json("campaign", "run", "k", "--keys", keys_dir, "--db", db, timeout=300)
    assert s["state"] == "completed" and s["totals"]["confirmed"] == 1, s
    with Store(str(db)) as store:
        report = json.loads(store.one("SELECT report FROM campaign_meters WHERE serial = 'CM0'")[0])
        log = [r[0] for r in store.rows("SELECT kind FROM campaign_log ORDER BY id")]
    assert report["resumed_from_block"] == sent and report["discrepancies"] == []
    assert "resumed" in log
    codes = [e["code"] for e in events(board)]
    assert codes.count(106) == 1 and codes.count(18) == 1 and codes.count(102) == 1  # one download, one switch
    assert status(board)["active_version"] == "1.1.0"

