"""What the supervisor and its clients share: the rig's paths, the sim directory's file names,
SimError, and small helpers for JSON files, processes and the supervisor's lock."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path


# This file is hil/supervisor/common.py: the repository is three levels up.
REPO = Path(__file__).resolve().parent.parent.parent
BOARD_DIR = REPO / "boards" / "sim"
DEFAULT_DEVICE_SCRIPT = BOARD_DIR / "power_on.py"
DEFAULT_HEAP_BYTES = 245888  # the stock RPI_PICO v1.28.0 firmware's heap
DEVICE_SCRIPT_ENV = "METERFW_SIM_DEVICE"
PICO_RIG = REPO / "hil" / "pico"
PICO_EMULATOR = PICO_RIG / "emulator.mjs"
BOARDS = ("sim", "pico")
FIRMWARE_ENV = "PICO_FIRMWARE"
BOOTROM_NAME = "rp2040-bootrom-B1.bin"
BOOTROM_ENV = "PICO_BOOTROM"

FLASH_IMG = "flash.img"
SIM_JSON = "sim.json"
STATE_JSON = "state.json"
SUPERVISOR_LOG = "supervisor.log"
HW_DIR = "hw"  # the sim board's models, compiled, in the sim's folder
CONSOLE_LOG = "console.log"
CMD_FIFO = "supervisor.fifo"
LOCK_FILE = "supervisor.lock"
TTY_LINK = "tty"
USB_LINK = "usb"

POWER_ON = "power-on"
WATCHDOG = "watchdog"
RESET = "reset"

RESET_GRACE_S = 2.0  # a device that asked for a reset must have exited by then
STOP_WAIT_S = 10.0
READY_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 15.0


class SimError(Exception):
    """A failure the CLI reports as `meterfw-sim: message` with exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pid_alive(pid: int | None) -> bool:
    """True if `pid` is a live process. A zombie counts as gone (and is reaped if it is ours)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat[stat.rfind(b")") + 2:][:1]
    if state in (b"Z", b"X"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _is_supervisor_of(pid: int | None, sim_dir: Path) -> bool:
    args = _cmdline(pid) if pid else []
    return "hil.supervisor" in args and str(sim_dir) in args


def _is_device_of(pid: int | None, sim_dir: Path) -> bool:
    """The unix port running sim_dir's meter: it runs in that folder, which its arguments name
    as "." (see PowerControl.boot)."""
    args = _cmdline(pid) if pid else []
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, TypeError):
        return False
    return cwd == str(sim_dir) and any("heapsize=" in a for a in args)


def _lock_held(sim_dir: Path) -> bool:
    """True if a supervisor holds DIR/supervisor.lock (flock dies with its holder)."""
    path = sim_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got one
    return False


def _heap_bytes() -> int:
    board = _read_json(BOARD_DIR / "board.json") or {}
    return int(board.get("heap_bytes", DEFAULT_HEAP_BYTES))


def _micropython() -> str:
    candidate = Path(sys.executable).parent / "micropython"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("micropython")
    if not found:
        raise SimError("micropython not found next to the Python interpreter or on PATH")
    return found


def _ensure_open(fd: int) -> None:
    try:
        os.fstat(fd)
    except OSError:
        spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if spare != fd:
            os.dup2(spare, fd, inheritable=False)
            os.close(spare)


def _link(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _node() -> str:
    import shutil

    node = shutil.which("node")
    if node is None:
        raise SimError("node is not installed: the Pico emulator needs Node.js 18 or newer")
    return node


def _resolve_dir(sim_dir) -> Path:
    return Path(sim_dir).expanduser().resolve()


def _device_script(device_script) -> Path | None:
    chosen = device_script or os.environ.get(DEVICE_SCRIPT_ENV)
    return Path(chosen).expanduser().resolve() if chosen else None


def read_state(sim_dir) -> dict:
    return _read_json(_resolve_dir(sim_dir) / STATE_JSON) or {}


def is_running(sim_dir) -> bool:
    return _lock_held(_resolve_dir(sim_dir))
