"""The rig's pytest plugin: a run ended by SIGTERM still stops every board its tests started."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hil.sim import pid_alive

ECHO_DEVICE = Path(__file__).parent / "echo_device.py"
REPO = Path(__file__).resolve().parents[2]


def test_a_run_ended_by_sigterm_stops_its_boards(tmp_path):
    started = tmp_path / "started.json"
    (tmp_path / "test_waits.py").write_text(f'''
import json, time
def test_waits(sim_factory):
    d = sim_factory.new_dir()
    (d / "flash.img").write_bytes(b"")  # no provisioning: the echo device needs no image
    b = sim_factory(dir=d, device_script={str(ECHO_DEVICE)!r})
    open({str(started)!r}, "w").write(json.dumps({{"supervisor": b.pid, "device": b.state()["device_pid"]}}))
    time.sleep(120)
''')
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["hil.pytest_plugin"]\n')
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                            "--basetemp", str(tmp_path / "bt"), str(tmp_path / "test_waits.py")],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
            time.sleep(0.1)
        pids = json.loads(started.read_text())
        assert all(pid_alive(p) for p in pids.values())
        run.send_signal(signal.SIGTERM)
        out = run.communicate(timeout=60)[0]
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [r for r, p in pids.items() if pid_alive(p)]
    for role in left:  # this test's own leftovers, ended before it fails
        os.kill(pids[role], signal.SIGKILL)
    assert not left, out
