"""The meter's home area network on the simulated Zigbee-SE medium (hil/supervisor/han.py): a
device enrolled with its EUI-64 and install code joins inside the join window with the key its
code derives, is comm-tested and self-tested, and the outcome is in the meter's device table;
the wrong code, a closed window, a silent device, a failing self-test and a technology without a
driver each end as they should; a removed device's key is gone; metering does not notice."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.pytest_plugin import PICO_INTERVAL_S, SEED, MeterBoard, start_dut
from meterfw.errors import CommandError
from meterfw.han import link_key, parse_install_code, with_crc
from test_meter_runtime import assert_energy_conserved, display_log

BIN = Path(sys.executable).parent
CODE = "83FED3407A939723A5C639B26916D505C3B5"  # Zigbee's example install code, CRC C3B5
OTHER_CODE = with_crc(bytes.fromhex("0102030405060708")).hex()  # a valid code, but not the device's
INTERVAL_S = 2


def han_dut(dut):
    """The DUT's interval, for a rig with the simulated HAN medium: the sim's radio, or the
    emulated Pico's co-processor on UART1; a real board's HAN is its own premises'."""
    if dut.kind not in ("sim", "pico"):
        pytest.skip("the simulated HAN medium is the rig's (sim or emulated Pico)")
    return INTERVAL_S if dut.kind == "sim" else PICO_INTERVAL_S


@pytest.fixture
def han_board(sim_factory, images, keys_dir, dut):
    """han_board(): a fresh meter with a HAN radio fitted on the simulated medium."""
    interval_s = han_dut(dut)

    def make():
        sim = start_dut(sim_factory, dut, images["v1"], keys_dir, interval_s, SEED, {"han": "ok"})
        return MeterBoard(sim, SEED, interval_s, keys_dir, dut.kind)

    return make


def shown(board, meter):
    """The customer notice the meter shows now: the sim's display log, else what the meter says."""
    return display_log(board)[-1] if board.kind == "sim" else meter.display()["text"]


def rig(board, *args):
    proc = subprocess.run([str(BIN / "meterfw-sim"), "han", *args, "--dir", str(board.dir), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def add(board, eui, kind="thermostat", code=CODE, *flags):
    return rig(board, "add", "--eui64", eui, "--install-code", code, "--kind", kind, *flags)


def on_air(board, eui):
    """What the medium knows of the device: joined or not, its short address, its counters."""
    return rig(board, "list")[eui]


def mfw(board, *args):
    proc = subprocess.run([str(BIN / "meterfw"), "--port", board.port, "--keys", str(board.keys_dir), *args, "--json"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else None, proc.stderr


def row(meter, eui):
    rows = [d for d in meter.han_table()["devices"] if d["eui64"] == eui]
    return rows[0] if rows else None


def test_bad_identities_are_refused_in_one_line_before_anything_is_sent(tmp_path):
    nowhere = str(tmp_path / "no-such-port")  # nothing is sent: the port is never opened
    for eui, code, said in (("XYZ", CODE, "is not 16 hex digits"), ("0000000000000000", CODE, "reserved"),
                            ("00124B0001A2B3C4", CODE[:-2] + "B6", "fails its CRC"),
                            ("00124B0001A2B3C4", CODE[:10], "6, 8, 12 or 16 bytes")):
        proc = subprocess.run([str(BIN / "meterfw"), "--port", nowhere, "han", "join", "--eui64", eui,
                               "--install-code", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and said in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    sim = tmp_path / "premises"
    sim.mkdir()

    def sim_add(eui, code):
        return subprocess.run([str(BIN / "meterfw-sim"), "han", "add", "--dir", str(sim), "--eui64", eui,
                               "--install-code", code, "--kind", "display"], capture_output=True, text=True, timeout=60)

    assert sim_add("00124B0001A2B3C4", CODE).returncode == 0
    again = sim_add("00:12:4B:00:01:A2:B3:C4", CODE)              # an EUI-64 is one device's (NFR3)
    assert again.returncode == 1 and "already on this HAN" in again.stderr
    bad = sim_add("00124B0001A2B3C5", CODE[:-2] + "B6")
    assert bad.returncode == 2 and "fails its CRC" in bad.stderr
    assert list(json.loads((sim / "han.json").read_text())["devices"]) == ["00124B0001A2B3C4"]


def test_enrolled_device_joins_passes_its_tests_and_once_removed_cannot_get_back_in(han_board):
    board = han_board()
    add(board, "00124B0001A2B3C4")
    rc, r, err = mfw(board, "han", "join", "--eui64", "00124B0001A2B3C4", "--install-code", CODE,
                     "--window-s", "20", "--wait", "10")
    assert rc == 0, err
    assert r["state"] == "joined" and r["kind"] == "thermostat" and r["key_held"] and "key" not in r
    assert r["outcome"]["ok"] and r["outcome"]["comm_test"] == "pass" and r["outcome"]["self_test"] == "pass"
    air = on_air(board, "00124B0001A2B3C4")
    assert air["state"] == "joined" and air["short"] == r["short"] and air["key_failures"] == 0
    m = board.meter()
    assert [i for i in m.health()["items"] if i["check"] == "han"][0]["status"] == "pass"
    assert 156 in [e["code"] for e in m.read_events()]
    assert shown(board, m).endswith("Home device 00124B0001A2B3C4 (thermostat) joined the meter")

    assert m.han_remove("00124B0001A2B3C4") == {"eui64": "00124B0001A2B3C4", "removed": True, "key_erased": True}
    assert row(m, "00124B0001A2B3C4") is None
    deadline = time.monotonic() + 10
    while on_air(board, "00124B0001A2B3C4")["state"] == "joined" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert on_air(board, "00124B0001A2B3C4")["state"] == "left"
    # Another device's window: the removed one asks to join too, and the meter, which holds no
    # key for it any more, refuses it.
    add(board, "00124B0001A2B3C5", "display")
    m.han_join("00124B0001A2B3C5", CODE, 5)
    assert m.han_outcome("00124B0001A2B3C5", 15)["outcome"]["ok"]
    gone = on_air(board, "00124B0001A2B3C4")
    assert gone["state"] == "left" and gone["refused"] >= 1
    assert row(m, "00124B0001A2B3C4") is None
    with pytest.raises(CommandError) as e:
        m.han_remove("00124B0001A2B3C4")
    assert e.value.code == "han_not_enrolled"


def test_wrong_install_code_is_refused_or_never_joins(han_board):
    board = han_board()
    add(board, "00124B0001A2B3D0")
    m = board.meter()
    mistyped = CODE[:-1] + ("4" if CODE[-1] != "4" else "5")  # one digit off: the CRC catches it
    with pytest.raises(CommandError) as e:
        m.han_join("00124B0001A2B3D0", mistyped, 5)
    assert e.value.code == "han_bad_install_code" and "CRC" in str(e.value)
    assert row(m, "00124B0001A2B3D0") is None                        # refused: nothing stored
    assert link_key(parse_install_code(OTHER_CODE)) != link_key(parse_install_code(CODE))
    m.han_join("00124B0001A2B3D0", OTHER_CODE, 10)                   # a good CRC, another device's code
    r = m.han_outcome("00124B0001A2B3D0", 20)
    assert r["state"] == "not_joined" and not r["outcome"]["ok"] and "install code" in r["outcome"]["message"]
    air = on_air(board, "00124B0001A2B3D0")
    assert air["state"] == "unjoined" and air["key_failures"] == 1   # the device could not take that key


def test_device_outside_the_join_window_does_not_join(han_board):
    board = han_board()
    m = board.meter()
    m.han_join("00124B0001A2B3E0", CODE, 2)
    r = m.han_outcome("00124B0001A2B3E0", 15)
    assert r["state"] == "not_joined" and "within the 2 s window" in r["outcome"]["message"]
    add(board, "00124B0001A2B3E0")                                   # switched on after the window closed
    time.sleep(1)
    air = on_air(board, "00124B0001A2B3E0")
    assert air["state"] == "unjoined" and air["associations"] == 0
    assert row(m, "00124B0001A2B3E0")["state"] == "not_joined"
    # A join queued behind another's window gets its whole window when the HAN task opens it,
    # not what is left of it by then.
    add(board, "00124B0001A2B3E1")
    m.han_join("00124B0001A2B3E2", CODE, 3)                          # nobody answers: 3 s
    m.han_join("00124B0001A2B3E1", CODE, 2)                          # queued behind it: 2 s of its own
    assert m.han_outcome("00124B0001A2B3E1", 20)["state"] == "joined"


def test_silent_device_fails_the_comm_test_and_a_failing_self_test_is_reported(han_board):
    board = han_board()
    add(board, "00124B0001A2B3F0", "load-control", CODE, "--silent")
    add(board, "00124B0001A2B3F1", "ev-charger", CODE, "--failing-self-test")
    m = board.meter()
    m.han_join("00124B0001A2B3F0", CODE, 10)
    m.han_join("00124B0001A2B3F1", CODE, 10)                          # queued behind the first
    silent, faulty = m.han_outcome("00124B0001A2B3F0", 20), m.han_outcome("00124B0001A2B3F1", 20)
    assert silent["state"] == "joined" and not silent["outcome"]["ok"]
    assert silent["outcome"]["comm_test"] == "fail" and silent["outcome"]["message"] == "comm test: 0 of 3 frames answered"
    assert faulty["state"] == "joined" and faulty["outcome"]["comm_test"] == "pass"
    assert faulty["outcome"]["self_test"] == "fail"
    assert faulty["outcome"]["message"] == "self-test failed: ground-fault-monitor"
    han = [i for i in m.health()["items"] if i["check"] == "han"][0]
    assert han["status"] == "fail" and "00124B0001A2B3F0" in han["message"] and "A2B3F1" not in han["message"]
    assert [e["value"] for e in m.read_events() if e["code"] == 157] == [2, 3]
    assert shown(board, m).endswith("(ev-charger) not enrolled: self-test failed: ground-fault-monitor")


def test_unknown_technology_is_refused_with_the_options(han_board):
    board = han_board()
    add(board, "00124B0001A2B400", "thermostat", CODE, "--tech", "plc")
    m = board.meter()
    for tech in ("plc", "x-10"):
        with pytest.raises(CommandError) as e:
            m.han_join("00124B0001A2B400", CODE, 5, tech=tech)
        assert e.value.code == "han_unknown_tech"
        assert f"no driver for {tech}" in str(e.value) and "bridge" in str(e.value)
    assert m.han_table()["devices"] == [] and m.han_table()["drivers"] == ["new-tech", "zigbee-se"]


def test_a_join_cut_short_by_a_restart_says_so(han_board):
    board = han_board()
    m = board.meter()
    m.han_join("00124B0001A2B600", CODE, 120)
    assert row(m, "00124B0001A2B600")["state"] == "joining"
    board.power_cycle()
    r = m.han_outcome("00124B0001A2B600", 30)
    assert r["state"] == "not_joined" and "restarted while the join window was open" in r["outcome"]["message"]
    assert r["key_held"]                                              # still enrolled: a join again needs no new code


def test_metering_is_undisturbed_while_the_han_is_busy(han_board):
    board = han_board()
    m = board.meter()
    for i in range(4):
        add(board, f"00124B0001A2B5{i:02X}", "thermostat", CODE, *(["--flaky"] if i % 2 else []))
    t0 = time.monotonic()
    for i in range(4):
        m.han_join(f"00124B0001A2B5{i:02X}", CODE, 5)
    m.han_join("00124B0001A2B5FF", CODE, 4)                          # a window nobody answers
    for i in range(4):
        assert m.han_outcome(f"00124B0001A2B5{i:02X}", 30)["state"] == "joined"
    assert m.han_outcome("00124B0001A2B5FF", 30)["state"] == "not_joined"
    for _ in range(3):
        m.health()                                                    # comm tests of every joined device
    busy_s = time.monotonic() - t0
    records = board.wait_intervals(int(busy_s // board.interval_s) + 2)
    assert assert_energy_conserved(records, SEED, received=board.kind == "sim") >= 2
    st = m.status()
    assert st["metering"]["closes"] >= len(records) - 1
