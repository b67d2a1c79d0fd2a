"""The sim-board supervisor (meterfw-sim) with a real MicroPython device: tests/hil/echo_device.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil.metrology import load_curve as load_curve_of
from hil.sim import SimBoard, SimError, pid_alive
from hil.supervisor.common import _heap_bytes

pytestmark = pytest.mark.timeout(120)

ECHO_DEVICE = Path(__file__).with_name("echo_device.py")
CONSOLE_SCRIPT = Path(sys.executable).with_name("meterfw-sim")


def blank_dir(sim_factory, wdt_ms=None) -> Path:
    """A sim directory with an (empty) flash image, so no provisioning is needed."""
    d = sim_factory.new_dir()
    (d / "flash.img").write_bytes(b"")
    if wdt_ms:
        (d / "echo_wdt").write_text(str(wdt_ms))
    return d


def echo_board(sim_factory, wdt_ms=None, **opts) -> SimBoard:
    return sim_factory(blank_dir(sim_factory, wdt_ms), device_script=ECHO_DEVICE, **opts)


def cli(*args, check=False, timeout=60):
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=check
    )


def read_until(port: serial.Serial, expected: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while expected not in got and time.monotonic() < deadline:
        got += port.read(max(1, port.in_waiting))
    assert expected in got, f"wanted {expected!r}, got {got!r}"
    return got


def expect_echo(port: serial.Serial, probe: bytes) -> bytes:
    """Send `probe` and return everything read up to and including its echo."""
    port.write(probe)
    return read_until(port, probe)


def open_port(board: SimBoard) -> serial.Serial:
    return serial.Serial(board.port, timeout=0.2)


def test_start_prints_one_json_line_and_wires_the_device_as_specified(sim_factory):
    d = blank_dir(sim_factory)
    r = cli("start", "--dir", d, "--device-script", ECHO_DEVICE, "--serial", "SIM0001", check=True)
    try:
        lines = r.stdout.splitlines()
        assert len(lines) == 1
        info = json.loads(lines[0])
        assert set(info) == {"port", "pid", "dir", "baud", "serial", "device_pid", "board"}
        assert info["board"] == "sim"
        assert info["dir"] == str(d.resolve()) and info["baud"] is None and info["serial"] == "SIM0001"
        assert os.readlink(d / "tty") == info["port"]
        args = Path(f"/proc/{info['device_pid']}/cmdline").read_bytes().decode().split("\0")[:-1]
        # The micropython console script runs under its interpreter, so compare the tail.
        # The folder as ".": the device runs in it, and no host path moves its heap's layout.
        assert args[-7:] == ["-X", f"heapsize={_heap_bytes()}", str(ECHO_DEVICE), ".", "power-on", "3", "4"]
        assert Path(f"/proc/{info['device_pid']}/cwd").resolve() == d.resolve()
        sim = json.loads((d / "sim.json").read_text())
        assert sim["seed"] == 1 and sim["interval_s"] is None and sim["baud"] is None
        assert sim["serial"] == "SIM0001" and isinstance(sim["created_s"], int)
    finally:
        assert cli("stop", "--dir", d).returncode == 0
    assert not pid_alive(info["pid"]) and not pid_alive(info["device_pid"])


def test_bridge_round_trip_is_byte_exact_through_pyserial(sim_factory):
    board = echo_board(sim_factory)
    data = bytes(range(256)).replace(b"~", b"-") * 40  # every byte value but the command marker
    with open_port(board) as port:
        expect_echo(port, b"hello\n")
        port.write(data)
        got = b""
        deadline = time.monotonic() + 20
        while len(got) < len(data) and time.monotonic() < deadline:
            got += port.read(len(data) - len(got))
        assert got == data


def test_device_reset_request_reboots_with_cause_reset(sim_factory):
    board = echo_board(sim_factory)
    first_pid = board.device_pid
    with open_port(board) as port:
        port.write(b"~~reset~~")
        read_until(port, b"boot reset\n")
    st = board.wait_boots(2)
    assert st["last_cause"] == "reset" and st["device_pid"] != first_pid
    assert not pid_alive(first_pid)
    assert "device requested reset" in board.supervisor_log()


def test_reset_request_without_exit_is_forced_after_two_seconds(sim_factory):
    board = echo_board(sim_factory)
    with open_port(board) as port:
        t0 = time.monotonic()
        port.write(b"~~resetstall~~")
        read_until(port, b"boot reset\n", timeout=15)
        assert time.monotonic() - t0 >= 1.8
    assert board.state()["last_cause"] == "reset"
    assert "no exit 2.0 s after reset request" in board.supervisor_log()


def test_watchdog_fed_holds_and_expiry_reboots_with_cause_watchdog(sim_factory):
    board = echo_board(sim_factory, wdt_ms=1500)
    board.wait_for(lambda st: st["watchdog_armed"], what="watchdog armed")
    with open_port(board) as port:
        time.sleep(2.5)  # longer than the timeout: feeding keeps it alive
        assert board.state()["boots"] == 1
        expect_echo(port, b"ping")
        t0 = time.monotonic()
        port.write(b"~~hang~~")
        read_until(port, b"boot watchdog\n", timeout=15)
        assert time.monotonic() - t0 >= 1.2  # 1500 ms after the last feed, at most 100 ms before
    st = board.state()
    assert st["boots"] == 2 and st["last_cause"] == "watchdog"
    assert "watchdog expired" in board.supervisor_log()


def test_crash_with_watchdog_armed_reboots_by_watchdog(sim_factory):
    board = echo_board(sim_factory, wdt_ms=1000)
    board.wait_for(lambda st: st["watchdog_armed"], what="watchdog armed")
    with open_port(board) as port:
        port.write(b"~~crash~~")
        read_until(port, b"boot watchdog\n", timeout=15)
    assert board.state()["last_cause"] == "watchdog"
    assert "RuntimeError: echo device crashed on request" in board.console()


def test_new_boot_starts_with_no_watchdog_armed(sim_factory):
    board = echo_board(sim_factory, wdt_ms=1500)
    board.wait_for(lambda st: st["watchdog_armed"], what="watchdog armed")
    (board.dir / "echo_wdt").unlink()  # the next boot does not arm it
    st = board.reset()
    assert st["boots"] == 2 and st["last_cause"] == "reset" and not st["watchdog_armed"]
    time.sleep(2.0)
    assert board.state()["boots"] == 2


def test_exit_without_watchdog_halts_and_bytes_sent_meanwhile_are_lost(sim_factory):
    board = echo_board(sim_factory)
    with open_port(board) as port:
        port.write(b"~~exit~~")
        st = board.wait_state("halted")
        assert st["halted"] and st["device_pid"] is None
        status = json.loads(cli("status", "--dir", board.dir, "--json", check=True).stdout)
        assert status["state"] == "halted" and status["device_pid"] is None
        port.reset_input_buffer()
        port.write(b"LOST-WHILE-HALTED")
        time.sleep(0.5)
        st = board.power_cycle()
        assert st["boots"] == 2 and st["last_cause"] == "power-on" and not st["halted"]
        got = read_until(port, b"boot power-on\n")
        got += expect_echo(port, b"ping")
        assert b"LOST" not in got
    assert board.state()["line"]["to_device"]["dropped_receiver_off"] >= len(b"LOST-WHILE-HALTED")


def test_bytes_waiting_in_the_device_input_do_not_reach_the_next_boot(sim_factory):
    board = echo_board(sim_factory)
    with open_port(board) as port:
        expect_echo(port, b"~~deaf~~")  # it stops reading its UART for 3 s
        port.write(b"STALE-BYTES")
        time.sleep(0.5)  # they sit in the device's input queue
        board.power_cycle()
        got = read_until(port, b"boot power-on\n")
        got += expect_echo(port, b"ping")
        assert b"STALE" not in got


def test_bytes_sent_during_power_off_are_dropped(sim_factory):
    board = echo_board(sim_factory)
    with open_port(board) as port:
        cycling = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "power-cycle", "--dir", str(board.dir), "--off-s", "1.5", "--json"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            board.wait_state("rebooting")
            port.write(b"SENT-WHILE-OFF")
            out, _ = cycling.communicate(timeout=30)
        finally:
            if cycling.poll() is None:
                cycling.kill()
                cycling.wait()
        assert cycling.returncode == 0
        assert json.loads(out)["last_cause"] == "power-on"
        got = read_until(port, b"boot power-on\n")
        got += expect_echo(port, b"ping")
        assert b"SENT-WHILE-OFF" not in got


def test_power_cycle_and_reset_commands_reboot_with_their_causes(sim_factory):
    board = echo_board(sim_factory)
    pid1 = board.device_pid
    st = board.power_cycle()
    assert (st["boots"], st["last_cause"]) == (2, "power-on")
    assert st["device_pid"] not in (None, pid1) and not pid_alive(pid1)
    r = cli("reset", "--dir", board.dir, "--json", check=True)
    assert json.loads(r.stdout)["last_cause"] == "reset"
    r = cli("power-cycle", "--dir", board.dir, check=True)
    assert "boot 4" in r.stdout
    st = board.state()
    assert (st["boots"], st["last_cause"], st["state"]) == (4, "power-on", "running")
    with open_port(board) as port:
        expect_echo(port, b"still alive")


def test_baud_pacing_holds_the_line_to_8n1_byte_time(sim_factory):
    board = echo_board(sim_factory, baud=9600)
    assert board.baud == 9600 and board.state()["baud"] == 9600
    data = (b"0123456789abcdef" * 125)[:2000]
    with open_port(board) as port:
        expect_echo(port, b"x")
        t0 = time.monotonic()
        port.write(data)
        got = b""
        while len(got) < len(data) and time.monotonic() - t0 < 30:
            got += port.read(len(data) - len(got))
        elapsed = time.monotonic() - t0
    assert got == data
    assert elapsed >= 1.5  # 2000 bytes / 960 bytes per second = 2.08 s


def test_device_ctl_log_and_unknown_lines_go_to_the_supervisor_log(sim_factory):
    board = echo_board(sim_factory)
    with open_port(board) as port:
        expect_echo(port, b"~~bogus~~")
    board.wait_for(lambda st: "bogus line" in board.supervisor_log(), what="bogus line logged")
    log = board.supervisor_log()
    assert "device: echo device up, cause power-on" in log
    assert "unknown ctl line ignored: 'bogus line'" in log
    assert board.state()["state"] == "running"


def test_stop_leaves_no_process_keeps_the_flash_and_is_idempotent(sim_factory):
    board = echo_board(sim_factory)
    sup_pid, dev_pid = board.pid, board.device_pid
    assert board.stop() is True
    assert not pid_alive(sup_pid) and not pid_alive(dev_pid)
    assert (board.dir / "flash.img").exists()
    assert not (board.dir / "tty").is_symlink()
    assert board.state()["state"] == "stopped"
    assert board.stop() is False
    r = cli("stop", "--dir", board.dir)
    assert r.returncode == 0 and "not running" in r.stdout
    status = json.loads(cli("status", "--dir", board.dir, "--json", check=True).stdout)
    assert status["state"] == "stopped" and status["pid"] is None
    r = cli("power-cycle", "--dir", board.dir)
    assert r.returncode == 1 and "not running" in r.stderr


def test_sigkilled_supervisor_takes_its_device_with_it(sim_factory):
    board = echo_board(sim_factory)
    dev_pid = board.device_pid
    os.kill(board.pid, 9)
    deadline = time.monotonic() + 5
    while (pid_alive(board.pid) or pid_alive(dev_pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(dev_pid)
    assert board.stop() is False  # the lock died with it


def test_start_twice_is_refused(sim_factory):
    board = echo_board(sim_factory)
    r = cli("start", "--dir", board.dir, "--device-script", ECHO_DEVICE)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("meterfw-sim: ") and "already running" in r.stderr
    with pytest.raises(SimError, match="already running"):
        SimBoard.start(board.dir, device_script=ECHO_DEVICE)
    assert board.state()["boots"] == 1 and pid_alive(board.pid)


def test_start_without_flash_image_or_provisioning_inputs_is_refused(sim_factory):
    d = sim_factory.new_dir()
    r = cli("start", "--dir", d, "--device-script", ECHO_DEVICE)
    assert r.returncode == 2
    assert r.stderr.strip() == f"meterfw-sim: {d} has no flash image; give --image and --keys to provision one"
    assert not (d / "state.json").exists()


def test_restart_keeps_stored_options_and_creation_time(sim_factory):
    board = echo_board(sim_factory, seed=7, interval_s=60, serial="SIM42")
    created = json.loads((board.dir / "sim.json").read_text())["created_s"]
    board.stop()
    again = sim_factory(board.dir, device_script=ECHO_DEVICE, baud=115200)
    sim = json.loads((board.dir / "sim.json").read_text())
    load_curve = sim.pop("load_curve")  # the default premises' curve, resolved for the front-ends
    assert sim == {"seed": 7, "interval_s": 60, "baud": 115200, "created_s": created, "serial": "SIM42",
                   "board": "sim", "load": "mixed"}
    assert load_curve == json.loads(json.dumps(load_curve_of("mixed")))
    assert again.serial == "SIM42" and again.baud == 115200
    assert again.state()["boots"] == 1  # a fresh supervisor counts from its own power-on


def test_status_reports_a_running_board(sim_factory):
    board = echo_board(sim_factory, wdt_ms=2000)
    board.wait_for(lambda st: st["watchdog_armed"], what="watchdog armed")
    r = cli("status", "--dir", board.dir, check=True)
    assert ": running" in r.stdout and "armed (2000 ms)" in r.stdout
    st = json.loads(cli("status", "--dir", board.dir, "--json", check=True).stdout)
    assert st["state"] == "running" and st["boots"] == 1 and st["last_cause"] == "power-on"
    assert st["port"] == board.port and st["device_pid"] == board.device_pid and st["watchdog_armed"]


def test_start_provisions_a_missing_flash_image_through_meterfw_provision(sim_factory, monkeypatch, tmp_path):
    calls = []

    def provision(flash, image_bytes, keys, *, board, serial):
        calls.append((flash, image_bytes, keys, board, serial))
        Path(flash).write_bytes(b"")
        return {"serial": "SIM-PROV-1"}

    fake = type(sys)("meterfw.provision")
    fake.provision = provision
    monkeypatch.setitem(sys.modules, "meterfw.provision", fake)
    image = tmp_path / "app.mfw"
    image.write_bytes(b"IMAGE")
    d = sim_factory.new_dir()
    board = sim_factory(d, image=image, keys=tmp_path / "keys", device_script=ECHO_DEVICE)
    assert calls == [(d.resolve() / "flash.img", b"IMAGE", tmp_path / "keys", "sim", None)]
    assert board.serial == "SIM-PROV-1"
    assert json.loads((d / "sim.json").read_text())["serial"] == "SIM-PROV-1"
    board.stop()
    sim_factory(d, image=image, keys=tmp_path / "keys", device_script=ECHO_DEVICE)
    assert len(calls) == 1  # an existing flash image is never provisioned over
