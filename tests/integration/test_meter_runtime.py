"""The meter runtime over the real link against the simulated meter: billing-grade metering,
meter state and the relay across upgrade, revert and power cuts, the event log, health,
time, customer notices, and alarms delivered at least once."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.metrology import true_energy_mwh, true_received_mwh
from hil.pytest_plugin import SEED, MeterBoard, start_dut
from meterfw import protocol as P
from meterfw.errors import CommandError
from meterfw.transport import Link
from meterfw.upgrade import continuity

MFW = str(Path(sys.executable).parent / "meterfw")
HEALTH_ITEMS = ["metrology", "clock", "storage", "data", "registers", "meter_state", "link", "han", "nan",
                "heap", "flash"]
EXACT_UNLESS = {"estimated", "partial", "clock-set"}  # flags that say the energy is not a boundary-to-boundary reading


def cli(board, *args, keys=True):
    extra = ["--keys", str(board.keys_dir)] if keys else []
    proc = subprocess.run([MFW, "--port", board.port, *extra, *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(board, *args, keys=True):
    rc, out, err = cli(board, *args, "--json", keys=keys)
    assert rc == 0, err
    return json.loads(out)


def relay_file(board):
    """The relay's physical truth, kept by the sim outside the MCU (boards/sim/parts.py)."""
    board.needs("files")
    path = board.dir / "relay.json"
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:  # the first boot has yet to fit it
        time.sleep(0.05)
    return json.loads(path.read_text())


def display_log(board):
    board.needs("files")  # the sim's display keeps what it showed
    path = board.dir / "display.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def runtime_board(sim_factory, images, keys_dir, dut):
    """runtime_board(interval_s=1, **settings): a fresh meter on v1 with these board settings."""

    def make(interval_s=1, **settings):
        sim = start_dut(sim_factory, dut, images["v1"], keys_dir, interval_s, SEED, settings)
        return MeterBoard(sim, SEED, interval_s, keys_dir, dut.kind)

    return make


def wait_closes(board, n, meter=None):
    """Block until at least n intervals are closed; returns every record."""
    meter = meter or board.meter()
    deadline = time.monotonic() + n * board.interval_s + 60
    while time.monotonic() < deadline:
        try:
            recs = meter.read_intervals()
            if len(recs) >= n:
                return recs
        except (CommandError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"fewer than {n} intervals closed in time")


def assert_energy_conserved(records, seed, received=True):
    """Σ interval energy = register delta = the front-end's true delta (the host's twin),
    delivered and received, over the whole run; exact per interval where it was read on time.
    received=False: a front-end that counts delivered energy only (the Pico's) receives none."""

    def true_received(start, end):
        return true_received_mwh(seed, start, end) if received else 0

    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for prev, r in zip(records, records[1:]):
        assert r["register_mwh"] - prev["register_mwh"] == r["energy_mwh"], r
        assert r["register_received_mwh"] - prev["register_received_mwh"] == r["received_mwh"], r
    on_time = [i for i, r in enumerate(records) if not EXACT_UNLESS & set(r["flags"])]
    a, b = records[on_time[0]], records[on_time[-1]]
    window = records[on_time[0] + 1:on_time[-1] + 1]
    end_a, end_b = a["start"] + a["duration_s"], b["start"] + b["duration_s"]
    assert sum(r["energy_mwh"] for r in window) == b["register_mwh"] - a["register_mwh"] \
        == true_energy_mwh(seed, end_a, end_b)
    assert sum(r["received_mwh"] for r in window) == b["register_received_mwh"] - a["register_received_mwh"] \
        == true_received(end_a, end_b)
    for i in on_time:
        r = records[i]
        end = r["start"] + r["duration_s"]
        assert (r["energy_mwh"], r["received_mwh"]) == (true_energy_mwh(seed, r["start"], end),
                                                        true_received(r["start"], end)), r
    return len(window)


def test_energy_state_and_relay_survive_upgrade_revert_and_two_power_cuts(runtime_board, images):
    board = runtime_board(interval_s=1)
    t0 = time.time()
    m = board.meter()
    m.set_state({"multiplier": 40, "limiting": {"enabled": True, "limit_w": 60000},
                 "pricing_events": [{"start_s": int(t0) + 86400, "end_s": int(t0) + 90000, "tier": 3}],
                 "prepayment": {"enabled": True, "credit_wh": 100000}})
    state_hash = m.status()["state_hash"]
    relay_before = relay_file(board)
    wait_closes(board, 4, m)
    board.power_cycle()                                   # cut 1: the MCU restarts at once
    wait_closes(board, 10, m)
    rc, out, err = cli(board, "upgrade", str(images["v2"]), "--json")
    assert rc == 0, err
    assert json.loads(out)["result"] == "confirmed"
    checked = {h["check"]: h for h in m.status()["health"]}  # against the pre-switch snapshot
    assert checked["registers"] == {"check": "registers", "severity": "critical", "ok": True, "message": None}
    assert checked["meter_state"]["ok"] and checked["meter_state"]["message"] is None
    wait_closes(board, len(m.read_intervals()) + 4, m)
    board.power_cycle(off_s=2.5)                          # cut 2: off across two boundaries
    wait_closes(board, len(m.read_intervals()) + 4, m)
    rc, out, err = cli(board, "revert", "--json")
    assert rc == 0, err
    records = wait_closes(board, 52, m)

    st = m.status()
    assert st["active_version"] == "1.0.0" and st["boot_reason"] == "revert"
    assert st["state_hash"] == state_hash                  # meter state bit for bit
    assert relay_file(board) == relay_before               # no actuation, relay where it was
    assert assert_energy_conserved(records, board.seed) >= 45
    flags = [f for r in records for f in r["flags"]]
    assert flags.count("firmware-change") >= 2 and "power-down" in flags and "estimated" in flags

    events = m.read_events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(t0 - 5 <= e["time"] <= time.time() + 5 for e in events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    codes = [e["code"] for e in events]
    for code in (17, 18, 102, 103, 143, 147):  # ready, activated, confirmed, reverted, state, healthy
        assert code in codes, code
    assert [e["value"] for e in events if e["code"] == 100].count(0) >= 3  # power-on boots, first one too

    # Customer notices before (available, downloading, ready), during (the trial boot) and after
    # (verdict, revert). The transfer's states reach the display as they are stored.
    notices = " | ".join(line.split(" ", 1)[1] for line in display_log(board))
    at = [notices.find(text) for text in ("1.1.0 available", "1.1.0 downloading", "1.1.0 ready",
                                          "Installing meter software 1.1.0", "updated to 1.1.0",
                                          "undone; running 1.0.0")]
    assert -1 not in at and at == sorted(at), notices
    assert notices.count("updated to 1.1.0") == 1, notices  # said once, not at every boot after


def test_relay_moves_only_on_an_authenticated_command_and_never_at_boot(board, sim_factory, tmp_path):
    from meterfw.keys import init_keys

    assert relay_file(board) == {"closed": True, "actuations": 0}
    rc, _, err = cli(board, "relay", "disconnect", keys=False)
    assert rc == 1 and "privileged command" in err
    init_keys(tmp_path / "other")
    rc, _, err = cli(board, "--keys", str(tmp_path / "other"), "relay", "disconnect", keys=False)
    assert rc == 1 and "authentication failed" in err
    assert relay_file(board) == {"closed": True, "actuations": 0}

    r = cli_json(board, "relay", "disconnect")
    assert r["moved"] and r["latched"] == "disconnected" and r["commanded"] == "disconnected"
    assert cli_json(board, "relay", "disconnect")["moved"] is False  # already open: no coil pulse
    assert relay_file(board) == {"closed": False, "actuations": 1}
    board.power_cycle()
    board.reset()
    st = cli_json(board, "relay")
    assert (st["latched"], st["commanded"], st["agrees"]) == ("disconnected", "disconnected", True)
    assert relay_file(board) == {"closed": False, "actuations": 1}  # boots read it, never move it
    assert "Supply disconnected" in display_log(board)[-1]
    assert cli_json(board, "relay", "connect")["moved"]
    assert relay_file(board) == {"closed": True, "actuations": 2}

    # A hand on the relay while the meter was off: the meter reports it and leaves it alone.
    board.sim.stop()
    (board.sim.dir / "relay.json").write_text(json.dumps({"closed": False, "actuations": 2}))
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port
    m = board.meter()
    alarms = m.read_alarms()
    assert any(a["code"] == 146 and "relay is disconnected" in a["message"] for a in alarms), alarms
    assert relay_file(board) == {"closed": False, "actuations": 2}
    names = [e["name"] for e in m.read_events()]
    assert names.count("relay disconnected") == 1 and names.count("relay connected") == 1
    assert "relay position differs from meter state" in names
    m.link.close()


def test_meter_state_changes_only_by_command_and_is_kept_through_power_cuts(board):
    before = cli_json(board, "read", "state")
    assert before["relay"]["connected"] and before["multiplier"] == 1 and before["seq"] == 0
    rc, out, err = cli(board, "state", "set", "multiplier=40", 'nem={"enabled": true, "channels": ["delivered", "received"]}',
                       'grid_events=[{"start_s": 1900000000, "end_s": 1900003600, "kind": "cycle", "level_pct": 50}]',
                       'power_quality={"sag_pct": 12}', "--json")
    assert rc == 0, err
    changed = json.loads(out)
    after = cli_json(board, "read", "state")
    assert after["hash"] == changed["hash"] != before["hash"] and after["seq"] == 1
    assert after["multiplier"] == 40 and after["nem"]["channels"] == ["delivered", "received"]
    assert after["grid_events"] == [{"start_s": 1900000000, "end_s": 1900003600, "kind": "cycle", "level_pct": 50}]
    assert after["power_quality"] == {"nominal_v": 230, "sag_pct": 12, "swell_pct": 10}

    for bad, why in ((["relay={\"connected\": false}"], "only by the relay command"), (["multiplier=0"], "multiplier"),
                     (["bogus=1"], "unknown setting"), (['limiting={"limit_w": -5}'], "limiting.limit_w"),
                     (['pricing_events=[{"start_s": 10, "end_s": 5}]'], "must end after it starts")):
        rc, _, err = cli(board, "state", "set", *bad)
        assert rc == 1 and err.startswith("meterfw: meter refused: meter state: ") and why in err, err
    with Link(board.port) as link, pytest.raises(CommandError) as e:
        link.request_json(P.SET_STATE, {"multiplier": 7})
    assert e.value.code == "auth_required"
    board.power_cycle()
    kept = cli_json(board, "read", "state")
    assert kept == after
    assert cli_json(board, "status")["state_hash"] == after["hash"]
    assert [e["value"] for e in cli_json(board, "log") if e["code"] == 143] == [1]


def test_health_reports_every_item_with_its_severity_and_the_clock_offset(runtime_board):
    board = runtime_board(interval_s=2, han="ok", nan="fail")
    rc, out, err = cli(board, "health", "--json")
    assert rc == 2, err  # unhealthy: an important item failed
    r = json.loads(out)
    items = {i["check"]: i for i in r["items"]}
    assert [i["check"] for i in r["items"]] == HEALTH_ITEMS
    assert items["han"]["status"] == "pass" and items["nan"]["status"] == "fail"
    assert items["nan"]["severity"] == "critical" and not r["ok"]
    assert all(items[n]["status"] == "pass" for n in HEALTH_ITEMS if n != "nan"), items
    assert abs(items["clock"]["value"]) < 1000 and items["metrology"]["value"] > 0

    assert cli(board, "state", "set", 'health_severity={"nan": "info"}')[0] == 0
    r = cli_json(board, "health", "--no-time")
    nan = [i for i in r["items"] if i["check"] == "nan"][0]
    assert nan["severity"] == "info" and nan["status"] == "fail" and r["ok"]
    clock = [i for i in r["items"] if i["check"] == "clock"][0]
    assert clock["status"] == "pass" and clock["value"] is None  # no host time: no offset
    st = cli_json(board, "status")
    assert [h["check"] for h in st["health"]] == HEALTH_ITEMS  # the post-boot run, in status


def test_startup_failure_reaches_a_host_in_seconds_and_is_redelivered_until_acknowledged(runtime_board):
    t0 = time.monotonic()
    board = runtime_board(interval_s=2, han="fail")
    m = board.meter()
    got = []
    while not got and time.monotonic() - t0 < 15:
        got = [a for a in m.listen(0.5) if a["code"] == 149]
    assert got, "no alarm pushed"
    assert time.monotonic() - t0 < 10                     # the requirement says 15 minutes
    alarm = got[0]
    assert alarm["message"].startswith("han: ") and alarm["report"] == "immediate"

    m.link.close()                                        # the link drops; the alarm stays due
    time.sleep(3)
    m.link.open()
    again = [a for a in m.listen(3) if a["seq"] == alarm["seq"]]
    assert again, "not redelivered after the link came back"
    board.power_cycle()                                   # persisted: it outlives a power cut
    assert m.wait_until(lambda s: s["health"] is not None, 10)  # (this boot's check reports anew)
    assert [a for a in m.read_alarms() if a["seq"] == alarm["seq"]]

    out = cli_json(board, "alarms", "--ack")
    assert alarm["seq"] in [a["seq"] for a in out["alarms"]] and out["acknowledged"] >= 1
    assert cli_json(board, "alarms")["alarms"] == [] or all(a["seq"] != alarm["seq"] for a in cli_json(board, "alarms")["alarms"])
    m.listen(0.5)  # frames pushed before the acknowledgement, still on the line
    assert [a for a in m.listen(3) if a["seq"] == alarm["seq"]] == []  # acknowledged: never again

    # Policy: important health failures wait for the next scheduled read instead.
    assert cli(board, "state", "set", "reporting={\"immediate\": [148]}")[0] == 0
    board.power_cycle()
    assert m.wait_until(lambda s: s["health"] is not None, 10)
    assert [a for a in m.listen(3) if a["code"] == 149] == []
    deferred = [a for a in cli_json(board, "read", "registers")["alarms"] if a["code"] == 149]
    assert deferred and deferred[0]["report"] == "next-read"
    assert "alarms acknowledged" in [e["name"] for e in m.read_events()]
    m.link.close()


def test_time_set_flags_the_interval_logs_old_and_new_and_sync_restores(runtime_board):
    board = runtime_board(interval_s=2)
    m = board.meter()
    wait_closes(board, 3, m)
    target_s = int(time.time()) + 3600
    r = cli_json(board, "time", "set", "--to", str(target_s))
    assert r["interval_split"] and abs(r["delta_ms"] - 3600_000) < 2000
    board.reset()                                          # the RTC keeps the setting
    assert abs(m.time_get()["offset_ms"] - 3600_000) < 2000
    n = len(m.read_intervals())
    wait_closes(board, n + 2, m)
    out = cli_json(board, "time", "sync")
    assert out["set"] and abs(out["offset_after_ms"]) < 1000
    assert cli_json(board, "time", "sync")["set"] is False  # within tolerance: left alone
    records = wait_closes(board, len(m.read_intervals()) + 2, m)
    split = [r for r in records if "clock-set" in r["flags"]]
    assert len(split) >= 4 and all("partial" in r["flags"] for r in split)
    for prev, rec in zip(records, records[1:]):
        assert rec["register_mwh"] - prev["register_mwh"] == rec["energy_mwh"]
    events = m.read_events()
    old = [e for e in events if e["code"] == 4]
    new = [e for e in events if e["code"] == 5]
    assert len(old) == len(new) == 2
    assert new[0]["time"] - old[0]["time"] >= 3590 and old[0]["value"] == new[0]["value"] >= 3598
    m.link.close()


def test_register_reset_logs_the_values_before_it_and_keeps_interval_energy_whole(board, images):
    m = board.meter()
    wait_closes(board, 2, m)
    before = m.read_registers()
    r = cli_json(board, "registers", "reset")["before"]
    assert r["delivered_mwh"] >= before["delivered_mwh"] > 0 and r["resets"] == 1
    after = m.read_registers()
    assert after["delivered_mwh"] < before["delivered_mwh"] and after["resets"] == 1
    assert after["lifetime_delivered_mwh"] >= r["delivered_mwh"]
    logged = {e["code"]: e["value"] for e in m.read_events() if e["code"] in (141, 142)}
    assert logged == {141: r["delivered_mwh"] // 1000, 142: r["received_mwh"] // 1000}
    records = wait_closes(board, len(m.read_intervals()) + 2, m)
    reset_at = [i for i, rec in enumerate(records) if "register-reset" in rec["flags"]]
    assert len(reset_at) == 1
    for i, (prev, rec) in enumerate(zip(records, records[1:]), 1):
        if i != reset_at[0]:
            assert rec["register_mwh"] - prev["register_mwh"] == rec["energy_mwh"]

    # FR3 on upgrade: reset once on the new image's first boot, when the activation asks for it.
    rc, out, err = cli(board, "upgrade", str(images["v2"]), "--when", "now", "--registers", "reset", "--json")
    assert rc == 0, err
    regs = m.read_registers()
    assert regs["resets"] == 2
    board.reset()
    assert m.read_registers()["resets"] == 2  # once per image, not once per boot
    assert [e["code"] for e in m.read_events()].count(141) == 2
    m.link.close()


def test_interval_quota_drops_the_oldest_and_reads_from_a_time_or_a_sequence(runtime_board):
    board = runtime_board(interval_s=1, interval_quota_records=6, interval_segment_records=3)
    m = board.meter()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not any(e["code"] == 140 for e in m.read_events()):
        time.sleep(1)
    time.sleep(2)
    records = m.read_intervals()
    assert 3 < len(records) <= 6 and records[0]["seq"] > 1
    assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[-1]["seq"] + 1))
    dropped = sum(e["value"] for e in m.read_events() if e["code"] == 140)
    assert dropped == records[0]["seq"] - 1
    target = records[-2]  # recent enough that the quota keeps it for the next seconds
    later = cli_json(board, "read", "intervals", "--since", str(target["start"]))
    assert [r["seq"] for r in later][:2] == [target["seq"], records[-1]["seq"]]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target["start"]))
    assert cli_json(board, "read", "intervals", "--since", iso)[0]["seq"] == target["seq"]
    assert cli_json(board, "read", "intervals", "--since-seq", str(target["seq"]))[0]["seq"] == target["seq"]
    m.link.close()


def test_metering_stays_on_time_while_the_link_is_busy(runtime_board):
    board = runtime_board(interval_s=1)
    m = board.meter()
    wait_closes(board, 2, m)
    closes_before = m.status()["metering"]["closes"]
    t_end = time.monotonic() + 6
    while time.monotonic() < t_end:  # the link as busy as the host can make it
        m.status()
        m.read_intervals()
        m.read_events()
        m.read_registers()
    st = m.status()["metering"]
    n = st["closes"] - closes_before
    assert n >= 5
    assert max(st["late_ms"][-n:]) <= 100, st["late_ms"][-n:]
    records = m.read_intervals()
    assert continuity(records)["intervals_missed"] == 0
    assert not any("estimated" in r["flags"] for r in records)
    m.link.close()
