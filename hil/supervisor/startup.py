"""Starting and stopping a supervisor. start() provisions DIR if needed, records sim.json and
detaches `python -m hil.supervisor run`; run() is that process's side: it sets up, boots the
device and answers on the ready pipe start() waits on. stop() and status() are the client's."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from hil.nan import parse_network

from .common import (
    BOARDS, FLASH_IMG, POWER_ON, READY_TIMEOUT_S, REPO, SIM_JSON, STATE_JSON, STOP_WAIT_S,
    SUPERVISOR_LOG, SimError, _device_script, _is_device_of, _is_supervisor_of, _lock_held,
    _read_json, _resolve_dir, _write_json_atomic, pid_alive, read_state,
)
from .daemon import Supervisor
from .pico import _pico_config, _provision_pico


# Supervisors started by this process, so stop() can reap them (else they linger as zombies).
_STARTED: dict[int, subprocess.Popen] = {}


def start(sim_dir, *, image=None, keys=None, baud=None, interval_s=None, seed=None,
          serial=None, device_script=None, uart_loss=None, tcp_port=None, board=None,
          firmware=None, bootrom=None, defaults=None, load=None, han=None, nan_network=None) -> dict:
    """Provision DIR if needed, record the run config and start a detached supervisor.

    `board="pico"` runs the stock MicroPython firmware (`firmware`, a UF2; default $PICO_FIRMWARE)
    on the emulated RP2040, with the RP2040 boot ROM (`bootrom`; default beside the firmware).
    `defaults` are board defaults a pico's /board/board.json is provisioned with (the sim reads
    its overrides from sim.json at every boot instead).
    `load` is the premises' load profile (hil.metrology.PROFILES; kept in sim.json like the seed).
    `han` fits the meter's HAN radio: "ok", "fail" (fitted, dead) or "absent" (kept in sim.json);
    on a pico, a co-processor on UART1 that provisioning writes into /board/board.json.
    `nan_network` is the mesh network id the NAN's collector admits (hil/nan.py; 16 bits, or
    "none" for a collector of the old NAN alone; kept in sim.json).
    Returns what `meterfw-sim start` prints: port, pid, dir, baud, serial, device_pid, board,
    and usb_port for a pico.
    """
    given = str(sim_dir)
    if load is not None:
        _load_curve(load)  # a bad name stops here, before anything is made or started
    if nan_network is not None:
        try:
            nan_network = parse_network(nan_network)
        except ValueError as e:
            raise SimError(str(e), 2) from None
        nan_network = "none" if nan_network is None else nan_network
    d = _resolve_dir(sim_dir)
    d.mkdir(parents=True, exist_ok=True)
    if _lock_held(d):
        pid = read_state(d).get("pid")
        raise SimError(f"a supervisor for {d} is already running (pid {pid}); stop it first")
    cfg = _read_json(d / SIM_JSON) or {}
    board = board or cfg.get("board", "sim")
    if board not in BOARDS:
        raise SimError(f"unknown board {board!r}: one of {', '.join(BOARDS)}", 2)
    if cfg.get("board", board) != board:
        raise SimError(f"{given} holds a {cfg['board']} meter, not {board}", 2)
    cfg["board"] = board
    flash = d / FLASH_IMG
    if board == "pico":
        cfg["pico"] = _pico_config(firmware, bootrom, cfg.get("pico"))
    if not flash.exists():
        if board == "pico":
            defaults = {"interval_s": interval_s, **(defaults or {})}
            fitted = (han or cfg.get("han")) in ("ok", "fail")
            serial = _provision_pico(flash, cfg["pico"], image, keys, serial, defaults, fitted)
        elif image is None or keys is None:
            raise SimError(f"{given} has no flash image; give --image and --keys to provision one", 2)
        else:
            from meterfw.provision import provision

            result = provision(flash, Path(image).read_bytes(), Path(keys), board="sim", serial=serial)
            serial = result["serial"]
    elif image is not None:
        print(f"meterfw-sim: {given} already has {FLASH_IMG}; --image not used", file=sys.stderr)

    cfg.setdefault("seed", 1)
    cfg.setdefault("interval_s", None)
    cfg.setdefault("baud", None)
    cfg.setdefault("created_s", int(time.time()))
    cfg.setdefault("serial", None)
    for key, value in (("seed", seed), ("interval_s", interval_s), ("baud", baud), ("serial", serial),
                       ("uart_loss", uart_loss), ("tcp_port", tcp_port), ("load", load), ("han", han),
                       ("nan_network", nan_network)):
        if value is not None:
            cfg[key] = value
    cfg["load_curve"] = _load_curve(cfg.setdefault("load", "mixed"))  # what the front-ends evaluate
    _write_json_atomic(d / SIM_JSON, cfg)

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    argv = [sys.executable, "-m", "hil.supervisor", "run", "--dir", str(d), "--ready-fd", str(ready_w)]
    script = _device_script(device_script)
    if script is not None:
        argv += ["--device-script", str(script)]
    try:
        with open(d / SUPERVISOR_LOG, "ab") as err:
            # cwd=REPO: `-m` puts the cwd first on sys.path, and DIR's files must not shadow ours.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(ready_w,), start_new_session=True, cwd=REPO,
            )
    finally:
        os.close(ready_w)
    try:
        msg = _await_ready(ready_r, proc)
    finally:
        os.close(ready_r)
    if not msg.get("ok"):
        proc.wait(timeout=STOP_WAIT_S)
        raise SimError(msg.get("error", "supervisor failed to start"), msg.get("code", 1))
    _STARTED[proc.pid] = proc
    keys = ("port", "pid", "dir", "baud", "serial", "device_pid", "tcp_port", "board", "usb_port")
    return {k: msg[k] for k in keys if k in msg}


def _load_curve(load: str) -> dict | None:
    from hil.metrology import load_curve

    try:
        return load_curve(load)
    except ValueError as e:
        raise SimError(str(e), 2) from None


def _await_ready(fd: int, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise SimError(f"supervisor did not become ready within {READY_TIMEOUT_S:.0f} s; see supervisor.log")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            proc.wait(timeout=STOP_WAIT_S)
            raise SimError(f"supervisor exited during start-up (rc={proc.returncode}); see supervisor.log")
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def run(sim_dir: Path, device_script: Path, ready_fd: int | None) -> int:
    def ready(msg: dict) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (json.dumps(msg) + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    sup = None
    try:
        sup = Supervisor(sim_dir, device_script)
        sup.setup()
        sup.boot(POWER_ON)
    except Exception as e:  # noqa: BLE001 - the starter must hear about any failure
        if sup is not None:
            sup.log("start failed:\n" + traceback.format_exc())
            if hasattr(sup, "line"):
                sup.kill_device("start failed")
        if isinstance(e, SimError):
            ready({"ok": False, "error": str(e), "code": e.code})
            return e.code
        ready({"ok": False, "error": f"supervisor failed to start: {e!r}", "code": 1})
        raise
    msg = {
        "ok": True, "port": sup.port, "pid": os.getpid(), "dir": str(sim_dir),
        "baud": sup.baud, "serial": sup.cfg.get("serial"), "device_pid": sup.proc.pid,
        "board": sup.board,
    }
    if sup.usb_port is not None:
        msg["usb_port"] = sup.usb_port
    if sup.tcp_port is not None:
        msg["tcp_port"] = sup.tcp_port
    ready(msg)
    try:
        sup.loop()
    except Exception:
        sup.log("supervisor crashed:\n" + traceback.format_exc())
        raise
    finally:
        sup.shutdown()
    return 0


def _wait_gone(pid: int, timeout_s: float) -> bool:
    proc = _STARTED.get(pid)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None:
            if proc.poll() is not None:
                _STARTED.pop(pid, None)
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop(sim_dir) -> bool:
    """Stop DIR's supervisor (and with it the device). False if it was not running."""
    d = _resolve_dir(sim_dir)
    st = read_state(d)
    pid = st.get("pid")
    if not _lock_held(d):
        if pid:
            _wait_gone(pid, 0)  # reap it if it was ours and has just exited
        return False
    if not (pid_alive(pid) and _is_supervisor_of(pid, d)):
        raise SimError(f"{d} is locked but state.json names no live supervisor (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, STOP_WAIT_S):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, STOP_WAIT_S)
        # PDEATHSIG should have taken the device with it; make sure.
        dev = read_state(d).get("device_pid")
        if pid_alive(dev) and _is_device_of(dev, d):
            try:
                os.killpg(dev, signal.SIGKILL)
            except ProcessLookupError:
                pass
        st = read_state(d)
        st.update(state="stopped", device_pid=None, updated_s=time.time())
        _write_json_atomic(d / STATE_JSON, st)
    return True


def status(sim_dir) -> dict:
    d = _resolve_dir(sim_dir)
    st = read_state(d)
    running = _lock_held(d)
    state = st.get("state", "stopped") if running else "stopped"
    return {
        "dir": str(d),
        "state": state,
        "pid": st.get("pid") if running else None,
        "port": st.get("port") if running else None,
        "baud": st.get("baud"),
        "serial": st.get("serial"),
        "boots": st.get("boots", 0),
        "last_cause": st.get("last_cause"),
        "device_pid": st.get("device_pid") if running else None,
        "watchdog_armed": bool(st.get("watchdog_armed")) if running else False,
        "watchdog_timeout_ms": st.get("watchdog_timeout_ms") if running else None,
        "board": st.get("board", "sim"),
        "usb_port": st.get("usb_port") if running else None,
        # The NAN's collector: the profile the meter uses now, the network it admits, and what
        # each profile carried (hil/nan.py).
        "nan": (st.get("line") or {}).get("nan"),
    }
