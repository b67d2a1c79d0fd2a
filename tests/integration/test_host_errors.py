"""The host against a running meter (#11 classes 5 and 8): `--serial` refuses another meter before
anything is done on it, and a port that goes away mid-upgrade is one line `meterfw: ...` and exit
1, never a traceback or the catch-all's internal error."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

MFW = str(Path(sys.executable).parent / "meterfw")
SERIAL_MISMATCH = 6


def cli(port, *args, keys=None, timeout_s=None):
    extra = (["--keys", str(keys)] if keys else []) + (["--timeout", str(timeout_s)] if timeout_s else [])
    proc = subprocess.run([MFW, "--port", port, *extra, *args], capture_output=True, text=True, timeout=180)
    return proc.returncode, proc.stdout, proc.stderr


def status(board):
    rc, out, err = cli(board.port, "status", "--json", timeout_s=board.timeout_s)
    assert rc == 0, err
    return json.loads(out)


def events(board):
    rc, out, err = cli(board.port, "log", "--json", timeout_s=board.timeout_s)
    assert rc == 0, err
    return json.loads(out)


def one_line(err):
    return err.startswith("meterfw: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("args", [["status"], ["relay", "disconnect"], ["upgrade", "V2", "--when", "now"],
                                  ["revert"], ["time", "set", "--to", "1700000000"]])
def test_another_meters_serial_is_refused_and_nothing_changes(board, images, keys_dir, args):
    meter = board.meter()  # booted, and its post-boot check (which logs its verdict) done
    assert meter.wait_until(lambda s: s.get("health") is not None, 60) is not None, board.console()[-2000:]
    meter.link.close()
    before, log_before = status(board), events(board)
    args = [str(images["v2"]) if a == "V2" else a for a in args]
    rc, out, err = cli(board.port, "--serial", "MF-NOT-THIS-ONE", *args, keys=keys_dir, timeout_s=board.timeout_s)
    assert rc == SERIAL_MISMATCH and one_line(err), (rc, err)
    assert f"is {before['serial']}, not MF-NOT-THIS-ONE" in err and out == ""
    after = status(board)
    for key in ("active_version", "active_slot", "slots", "confirmed", "update", "state_hash", "boot_reason"):
        assert after[key] == before[key], key
    assert [e for e in events(board) if e["seq"] > log_before[-1]["seq"]] == []  # not even a notice


def test_the_meters_own_serial_goes_through(board, keys_dir):
    serial = status(board)["serial"]
    rc, out, err = cli(board.port, "--serial", serial, "relay", "status", "--json", keys=keys_dir,
                       timeout_s=board.timeout_s)
    assert rc == 0, err
    rc, out, err = cli(board.port, "--serial", serial, "time", "sync", "--tolerance-ms", "0", keys=keys_dir,
                       timeout_s=board.timeout_s)
    assert rc == 0 and err == "", err  # authenticated: the session key from the pinned serial


def test_a_meter_that_goes_away_mid_transfer_is_one_line(dut, sim_factory, images, keys_dir):
    """A slow line (19200 baud: the image takes ~20 s), so the sim's line counters, refreshed each
    second, see the blocks going out; then the supervisor stops, and the port goes with it."""
    if dut.kind != "sim":
        pytest.skip("stops the simulated board's supervisor mid-transfer")
    board = sim_factory(image=images["v1"], keys=keys_dir, interval_s=3, seed=7, baud=19200)
    base = board.state()["line"]["to_device"]["delivered"]
    proc = subprocess.Popen([MFW, "--port", board.port, "--keys", str(keys_dir), "upgrade", str(images["v2"]),
                             "--when", "now"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while board.state()["line"]["to_device"]["delivered"] - base < 4096:  # blocks are going out
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert board.stop()  # the supervisor goes, and with it the meter's end of the port
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and one_line(err), (proc.returncode, err)
    assert "internal error" not in err


def test_waiting_for_a_meter_on_a_slow_line_needs_no_longer_timeout(dut, sim_factory, images, keys_dir):
    """At 19200 baud a status reply (~2 KB) takes over a second on the wire: the waits that poll
    it (after an activation, a revert) must give each poll that long, whatever --timeout says."""
    if dut.kind != "sim":
        pytest.skip("sets the simulated line's baud rate")
    from meterfw.session import Meter
    from meterfw.transport import DEFAULT_TIMEOUT_S, Link
    board = sim_factory(image=images["v1"], keys=keys_dir, interval_s=3, seed=7, baud=19200)
    with Link(board.port, baud=19200, timeout_s=DEFAULT_TIMEOUT_S) as link:
        st = Meter(link).wait_until(lambda s: s.get("health") is not None, 60)
    assert st is not None, "no status within 60 s"
    assert len(json.dumps(st)) > 19200 / 10 * DEFAULT_TIMEOUT_S / 3, len(json.dumps(st))  # longer than a third of --timeout
