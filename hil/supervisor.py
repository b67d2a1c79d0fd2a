"""meterfw-sim: the host process that plays power, reset, watchdog and the serial line for a
simulated Pico meter.

One supervisor per sim directory DIR. It owns two pseudo-terminal pairs: the user pty, whose
slave path is the `port` host tools open like /dev/ttyACM0 (DIR/tty links to it), and the device
pty, whose slave is the MicroPython process's stdin/stdout. hil.line bridges the two masters.
Each boot runs one MicroPython unix-port process:

    micropython -X heapsize=H <device_script> DIR <reset_cause> 3 4

with stderr appended to DIR/console.log (the MCU's debug UART), fd 3 the write end of the
"ctl out" pipe (wdt/feed/reset/log lines from the device) and fd 4 the read end of "ctl in".

Files in DIR: flash.img (the board's flash, never removed), sim.json (run config, also read by
the device), state.json (the supervisor's state, rewritten atomically), supervisor.log,
console.log, supervisor.fifo (commands from `meterfw-sim power-cycle|reset`) and
supervisor.lock (held by the running supervisor; the source of truth for "is it running").

The client side (start/stop/status/commands) lives here too so the CLI and hil.sim.SimBoard run
the same code.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import fcntl
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import termios
import time
import traceback
import tty
from pathlib import Path

from hil.line import Line

REPO = Path(__file__).resolve().parent.parent
BOARD_DIR = REPO / "boards" / "sim"
DEFAULT_DEVICE_SCRIPT = BOARD_DIR / "power_on.py"
DEFAULT_HEAP_BYTES = 204800
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
_STATE_REFRESH_S = 1.0  # line counters in state.json are refreshed at most this often
_IDLE_WAKE_S = 0.5
_PAUSE_S = 0.5  # a gap between two flash operations this long is recorded as a pause

_PR_SET_PDEATHSIG = 1


class SimError(Exception):
    """A failure the CLI reports as `meterfw-sim: message` with exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# Small helpers shared by both sides
# --------------------------------------------------------------------------------------------

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
    args = _cmdline(pid) if pid else []
    return str(sim_dir) in args and any("heapsize=" in a for a in args)


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


# --------------------------------------------------------------------------------------------
# The supervisor process
# --------------------------------------------------------------------------------------------

class Supervisor:
    def __init__(self, sim_dir: Path, device_script: Path):
        self.dir = sim_dir
        self.device_script = device_script
        self.cfg = _read_json(sim_dir / SIM_JSON) or {}
        self.baud = self.cfg.get("baud")
        # "pico": the stock firmware in the rp2040js emulator, which paces the line itself in
        # emulated time and plays flash, watchdog, front-end and RTC (hil/pico/emulator.mjs).
        self.board = self.cfg.get("board", "sim")
        self.usb_port: str | None = None
        self.usb_master: int | None = None
        # Remote access (FR6): a loopback TCP port bridged to the meter's line, one client at a time.
        self.tcp_port = self.cfg.get("tcp_port")
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._client_peer: str | None = None
        self.uart_lost = 0  # bytes the device's UART model dropped during flash stalls, all boots
        self.heap_bytes = _heap_bytes()
        self.micropython = _micropython()
        self.t0 = time.monotonic()
        self.started_s = time.time()
        self._log_f = open(sim_dir / SUPERVISOR_LOG, "a", buffering=1)

        self.boots = 0
        self.last_cause: str | None = None
        self.proc: subprocess.Popen | None = None
        self.ctl_out: int | None = None  # our read end of the device's fd 3
        self.ctl_in: int | None = None  # our write end of the device's fd 4
        self.flash_ops = 0   # erases and programs the device reported, over all boots
        # The emulated chip's clock when last asked (`clock` command): its time since power-on
        # and the wall time since, both in microseconds.
        self.emulated_us: int | None = None
        self.emulated_wall_us: int | None = None
        self.power_cuts = 0  # cuts at a flash operation that the device carried out
        # For the power-cut sweep, which marks a phase's parts by them: the flash operations
        # done before each of the last boots, and the pauses in flash activity (the operations
        # done before a pause of at least _PAUSE_S, and its length) of the last few boots.
        self.boot_ops: collections.deque[int] = collections.deque(maxlen=16)
        self.pauses: collections.deque[list] = collections.deque(maxlen=64)
        self._last_op_t: float | None = None
        # A planned cut outlives the boots before it: [operations left, torn]. The device
        # counts down within a boot; we count its reported operations to hand the rest on.
        self.cut_plan: list | None = None
        self._ctl_buf = b""
        self.wdt_ms: int | None = None
        self.wdt_deadline: float | None = None
        self.reset_requested = False
        self.reset_cause = RESET  # what the boot after a requested reset counts as
        self.reset_deadline: float | None = None
        self.pending_boot: tuple[float, str] | None = None  # (monotonic time, cause)
        self.halted = False
        self.acks: collections.deque[str] = collections.deque(maxlen=32)
        self._acks_at_boot: list[str] = []
        self._stop_signal: int | None = None
        self._state_written_t = 0.0
        self._state_line_stats: dict | None = None
        self._lock_fd: int | None = None
        self._fds: list[int] = []
        self.port = ""

    # -- logging and state ------------------------------------------------------------------
    def log(self, msg: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._log_f.write(f"{stamp} +{time.monotonic() - self.t0:9.3f} {msg}\n")

    def state_name(self) -> str:
        if self.proc is not None:
            return "running"
        if self.halted:
            return "halted"
        if self.pending_boot is not None:
            return "rebooting"
        return "starting" if self.boots == 0 else "off"

    def state(self, name: str | None = None) -> dict:
        return {
            "pid": os.getpid(),
            "dir": str(self.dir),
            "port": self.port,
            "baud": self.baud,
            "serial": self.cfg.get("serial"),
            "state": name or self.state_name(),
            "halted": self.halted,
            "boots": self.boots,
            "last_cause": self.last_cause,
            "device_pid": self.proc.pid if self.proc else None,
            "device_script": str(self.device_script),
            "watchdog_armed": self.wdt_ms is not None,
            "watchdog_timeout_ms": self.wdt_ms,
            "reset_pending": self.reset_requested,
            "started_s": self.started_s,
            "updated_s": time.time(),
            "acks": list(self.acks),
            "line": self.line.stats() if hasattr(self, "line") else None,
            "flash_ops": self.flash_ops,
            "power_cuts": self.power_cuts,
            "boot_ops": list(self.boot_ops),
            "pauses": list(self.pauses),
            "tcp_port": self.tcp_port,
            "tcp_client": self._client_peer,
            "uart_lost": self.uart_lost,
            "board": self.board,
            "usb_port": self.usb_port,
            "emulated_us": self.emulated_us,
            "emulated_wall_us": self.emulated_wall_us,
        }

    def write_state(self, name: str | None = None) -> None:
        _write_json_atomic(self.dir / STATE_JSON, self.state(name))
        self._state_written_t = time.monotonic()
        if hasattr(self, "line"):
            self._state_line_stats = self.line.stats()

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SimError(f"a supervisor for {self.dir} is already running") from None
        if not self.device_script.is_file():
            raise SimError(f"device script {self.device_script} not found")
        if self.board == "pico" and not (PICO_RIG / "node_modules" / "rp2040js").is_dir():
            raise SimError(f"the Pico emulator is not installed: run `make setup` (npm ci in {PICO_RIG})")
        self.write_state("starting")

        self.user_master, self.user_slave = os.openpty()
        self.dev_master, self.dev_slave = os.openpty()
        self._fds += [self.user_master, self.user_slave, self.dev_master, self.dev_slave]
        # Keeping our own user-slave fd open means the host closing the port never makes the
        # master see EIO, and the raw settings persist between host sessions.
        tty.setraw(self.user_slave)
        self._make_device_tty_raw()
        for fd in (self.user_master, self.dev_master):
            os.set_blocking(fd, False)
        self.port = os.ttyname(self.user_slave)
        _link(self.dir / TTY_LINK, self.port)
        if self.board == "pico":
            # The chip's USB CDC port (its REPL): the emulator holds the master across boots'
            # processes in turn; we keep the slave open so the master never sees a hang-up.
            self.usb_master, usb_slave = os.openpty()
            self._fds += [self.usb_master, usb_slave]
            tty.setraw(usb_slave)
            self.usb_port = os.ttyname(usb_slave)
            _link(self.dir / USB_LINK, self.usb_port)

        fifo = self.dir / CMD_FIFO
        if fifo.exists() and not fifo.is_fifo():
            fifo.unlink()
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)
        self.cmd_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # A writer of our own keeps the FIFO from reporting EOF between clients.
        self._cmd_keepalive = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._cmd_buf = b""
        self._fds += [self.cmd_fd, self._cmd_keepalive]

        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds += [self.wake_r, self.wake_w]
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        # A handler (even a no-op) is needed for SIGCHLD to reach the wake-up fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

        self._libc = ctypes.CDLL(None, use_errno=True)
        # The emulated Pico's UART paces bytes in emulated time itself.
        self.line = Line(self.user_master, self.dev_master, None if self.board == "pico" else self.baud)
        if self.tcp_port is not None:
            self._listen(int(self.tcp_port))
        self.log(
            f"supervisor up: dir={self.dir} port={self.port} baud={self.baud} "
            f"device={self.device_script} heap={self.heap_bytes}"
        )

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _make_device_tty_raw(self) -> None:
        tty.setraw(self.dev_slave)
        attrs = termios.tcgetattr(self.dev_slave)
        # The unix port's reads return what is there, even nothing; the emulator's reader
        # takes a read of nothing for the end of the line, so its reads wait for a byte.
        attrs[6][termios.VMIN] = 1 if self.board == "pico" else 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self.dev_slave, termios.TCSANOW, attrs)

    # -- the device process -----------------------------------------------------------------
    def boot(self, cause: str, device_cause: str | None = None) -> None:
        assert self.proc is None
        # The device may have changed its terminal; a fresh MCU starts from our settings, and
        # bytes that reached its input queue while it was dying or off are gone.
        self._make_device_tty_raw()
        termios.tcflush(self.dev_slave, termios.TCIFLUSH)
        self.line.set_device_up(False)

        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        # Keep the child's ends clear of 3 and 4 so the dup2s in the child cannot clobber them.
        child_out = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        child_in = fcntl.fcntl(in_r, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(out_w)
        os.close(in_r)
        os.set_blocking(out_r, False)
        os.set_blocking(in_w, False)
        pico = self.board == "pico"
        if pico:
            os.set_blocking(child_in, False)  # the emulator polls for a cut plan at each flash op
        libc = self._libc
        usb = self.usb_master

        def in_child() -> None:
            os.dup2(child_out, 3)
            os.dup2(child_in, 4)
            if usb is not None:
                os.dup2(usb, 5)
            # If the supervisor dies (even by SIGKILL) the MCU loses power with it.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        if pico:
            argv = [_node(), str(self.device_script), str(self.dir), device_cause or cause, "3", "4", "5"]
        else:
            argv = [
                self.micropython, "-X", f"heapsize={self.heap_bytes}", str(self.device_script),
                str(self.dir), cause, "3", "4",
            ]
        fds = (3, 4, 5) if pico else (3, 4)
        n = self.boots + 1
        for fd in fds:
            _ensure_open(fd)
        with open(self.dir / CONSOLE_LOG, "ab") as console:
            console.write(f"--- boot {n} cause={cause} ---\n".encode())
            console.flush()
            # pass_fds=(3, 4) keeps the dup2'd fds through close_fds (which runs after
            # preexec_fn); subprocess insists they are open here too, hence _ensure_open.
            try:
                self.proc = subprocess.Popen(
                    argv, stdin=self.dev_slave, stdout=self.dev_slave, stderr=console,
                    cwd=self.dir, pass_fds=fds, preexec_fn=in_child,
                    start_new_session=True, close_fds=True,
                )
            finally:
                os.close(child_out)
                os.close(child_in)
        self.ctl_out, self.ctl_in = out_r, in_w
        self._ctl_buf = b""
        self._send_cut_plan()
        self.boots = n
        self.boot_ops.append(self.flash_ops)
        self._last_op_t = None
        self.last_cause = cause
        self.wdt_ms = None
        self.wdt_deadline = None
        self.reset_requested = False
        self.reset_cause = RESET
        self.reset_deadline = None
        self.pending_boot = None
        self.halted = False
        self.line.set_device_up(True)
        self.acks.extend(self._acks_at_boot)
        self._acks_at_boot = []
        self.log(f"boot {n} cause={cause} device_pid={self.proc.pid}")
        self.write_state()

    def _send_cut_plan(self) -> None:
        if self.cut_plan is not None and self.ctl_in is not None and self.cut_plan[0] > 0:
            n, torn = self.cut_plan
            os.write(self.ctl_in, f"cut {n} {'torn' if torn else 'clean'}\n".encode())

    def kill_device(self, why: str) -> None:
        """Cut the MCU's power at once."""
        if self.proc is None:
            return
        pid = self.proc.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = self.proc.wait()
        if self.cut_plan is not None:
            self._read_ctl(time.monotonic())  # its last flash operations count toward the plan
        self.log(f"device pid={pid} killed ({why}), rc={rc}")
        self._device_gone()

    def _device_gone(self) -> None:
        self.proc = None
        self.line.set_device_up(False)
        for fd in (self.ctl_out, self.ctl_in):
            if fd is not None:
                os.close(fd)
        self.ctl_out = self.ctl_in = None
        self._ctl_buf = b""

    def _on_device_exit(self, now: float) -> None:
        pid, rc = self.proc.pid, self.proc.returncode
        self._read_ctl(now)  # a `reset` written just before exiting must count
        self.log(f"device pid={pid} exited rc={rc}")
        self._device_gone()
        if self.reset_requested:
            self.boot(self.reset_cause)
        elif self.wdt_ms is not None:
            # Like a Pico stuck at the REPL after a crash: its watchdog still fires.
            self.pending_boot = (self.wdt_deadline, WATCHDOG)
            self.log(f"watchdog armed: reboot in {max(self.wdt_deadline - now, 0):.3f} s")
            self.write_state()
        else:
            self.halted = True
            self.log("halted: device exited with no watchdog armed")
            self.write_state()

    # -- control lines from the device ------------------------------------------------------
    def _read_ctl(self, now: float) -> None:
        if self.ctl_out is None:
            return
        while True:
            try:
                chunk = os.read(self.ctl_out, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._ctl_buf += chunk
        *lines, self._ctl_buf = self._ctl_buf.split(b"\n")
        for raw in lines:
            self._ctl_line(raw.decode(errors="replace").strip(), now)

    def _ctl_line(self, line: str, now: float) -> None:
        if not line:
            return
        word, _, rest = line.partition(" ")
        if word == "w":
            if self._last_op_t is not None and now - self._last_op_t >= _PAUSE_S:
                self.pauses.append([self.flash_ops, round(now - self._last_op_t, 3)])
            self._last_op_t = now
            self.flash_ops += 1
            if self.cut_plan is not None:
                self.cut_plan[0] -= 1
        elif word == "cut":
            # The device stopped itself at the flash operation we asked for: the power is off.
            self.power_cuts += 1
            self.cut_plan = None
            self.log(f"power cut at flash operation: {rest}")
            self.kill_device("power cut at a flash operation")
            self.boot(POWER_ON)
        elif word == "feed":
            if self.wdt_ms is not None:
                self.wdt_deadline = now + self.wdt_ms / 1000.0
        elif word == "wdt":
            try:
                ms = int(rest)
                if ms <= 0:
                    raise ValueError
            except ValueError:
                self.log(f"device: bad ctl line ignored: {line!r}")
                return
            self.wdt_ms = ms
            self.wdt_deadline = now + ms / 1000.0
            self.log(f"watchdog armed {ms} ms")
            self.write_state()
        elif word == "clock":
            token, _, rest = rest.partition(" ")
            us, _, wall_us = rest.partition(" ")
            self.emulated_us, self.emulated_wall_us = int(us), int(wall_us)
            self.acks.append(token)
            self.write_state()
        elif word == "watchdog":
            # The emulated chip's own watchdog fired (in emulated time); its process ends next.
            if self.reset_requested:
                return
            self.log("watchdog expired (emulated chip)")
            self.reset_requested = True
            self.reset_cause = WATCHDOG
            self.reset_deadline = now + RESET_GRACE_S
            self.write_state()
        elif word == "reset":
            if not self.reset_requested:
                self.reset_requested = True
                self.reset_deadline = now + RESET_GRACE_S
                self.log("device requested reset")
                self.write_state()
        elif word == "log":
            self.log(f"device: {rest}")
            if rest.startswith("uart-loss "):  # the UART model's overrun count, for the rig
                fields = dict(w.split("=", 1) for w in rest.split()[1:] if "=" in w)
                self.uart_lost += int(fields.get("lost", 0))
                self.write_state()
        else:
            self.log(f"device: unknown ctl line ignored: {line!r}")

    # -- commands from meterfw-sim clients --------------------------------------------------
    def _read_cmds(self, now: float) -> None:
        while True:
            try:
                chunk = os.read(self.cmd_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._cmd_buf += chunk
        *lines, self._cmd_buf = self._cmd_buf.split(b"\n")
        for raw in lines:
            self._command(raw.decode(errors="replace").split(), now)

    def _command(self, words: list[str], now: float) -> None:
        if len(words) < 2:
            self.log(f"bad command ignored: {words!r}")
            return
        cmd, token, args = words[0], words[1], words[2:]
        if cmd == "power-cycle":
            try:
                off_s = max(float(args[0]), 0.0) if args else 0.0
            except ValueError:
                self.log(f"bad command ignored: {words!r}")
                self.acks.append(token)
                self.write_state()
                return
            self.log(f"command power-cycle off_s={off_s}")
            self.kill_device("power cut")
            self.halted = False
            if off_s > 0:
                self.pending_boot = (now + off_s, POWER_ON)
                self._acks_at_boot.append(token)  # the caller waits for the power to return
                self.write_state()
            else:
                self._acks_at_boot.append(token)
                self.boot(POWER_ON)
        elif cmd == "cut":
            # Forward to the device's flash model: cut the power at its Nth flash operation
            # from now, optionally tearing that operation part-way.
            self.log(f"command cut {' '.join(args)}")
            self.cut_plan = [int(args[0]), len(args) > 1 and args[1] == "torn"]
            self._send_cut_plan()
            self.acks.append(token)
            self.write_state()
        elif cmd == "clock":
            # The emulated chip answers with its clock (and the ack); a sim has none.
            if self.board == "pico" and self.ctl_in is not None:
                os.write(self.ctl_in, f"clock {token}\n".encode())
            else:
                self.emulated_us = self.emulated_wall_us = None
                self.acks.append(token)
                self.write_state()
        elif cmd == "power-off":
            # The power goes off and stays off until power-on: the rig may change what the
            # board keeps meanwhile (its flash image, the RTC's backup). A planned cut goes too.
            self.log("command power-off")
            self.kill_device("power off")
            self.cut_plan = None
            self.pending_boot = None
            self.halted = False
            self.acks.append(token)
            self.write_state()
        elif cmd == "power-on":
            self.log("command power-on")
            if self.proc is None:
                self._acks_at_boot.append(token)
                self.boot(POWER_ON)
            else:
                self.acks.append(token)
                self.write_state()
        elif cmd == "sync":
            self.acks.append(token)  # a fresh state.json, e.g. for the flash-operation count
            self.write_state()
        elif cmd == "reset":
            self.log("command reset")
            self.kill_device("reset pin")
            self._acks_at_boot.append(token)
            self.boot(RESET, device_cause="pin")  # the RUN pin: an RP2040 sees a power-on
        else:
            self.log(f"unknown command ignored: {words!r}")
            self.acks.append(token)
            self.write_state()

    # -- the loop ---------------------------------------------------------------------------
    def _deadlines(self) -> list[float]:
        t = []
        if self.proc is not None:
            if self.reset_requested:
                t.append(self.reset_deadline)
            elif self.wdt_deadline is not None:
                t.append(self.wdt_deadline)
        elif self.pending_boot is not None:
            t.append(self.pending_boot[0])
        return t

    def _timers(self, now: float) -> None:
        if self.proc is not None:
            if self.reset_requested:
                if now >= self.reset_deadline:
                    self.kill_device(f"no exit {RESET_GRACE_S} s after reset request")
                    self.boot(self.reset_cause)
            elif self.wdt_deadline is not None and now >= self.wdt_deadline:
                self.log(f"watchdog expired ({self.wdt_ms} ms without feed)")
                self.kill_device("watchdog")
                self.boot(WATCHDOG)
        elif self.pending_boot is not None and now >= self.pending_boot[0]:
            self.boot(self.pending_boot[1])

    def loop(self) -> None:
        poller = select.poll()
        registered: dict[int, int] = {}
        while self._stop_signal is None:
            now = time.monotonic()
            mask = self.line.poll_mask(now)
            mask[self.wake_r] = select.POLLIN
            mask[self.cmd_fd] = select.POLLIN
            if self.ctl_out is not None:
                mask[self.ctl_out] = select.POLLIN
            if self._listener is not None and self._client is None:
                # A second client waits in the backlog until the first one hangs up.
                mask[self._listener.fileno()] = select.POLLIN
            waits = [_IDLE_WAKE_S]
            line_wait = self.line.timeout(now)
            if line_wait is not None:
                waits.append(line_wait)
            waits += [max(t - now, 0.0) for t in self._deadlines()]
            for fd in registered.keys() - mask.keys():
                poller.unregister(fd)
            for fd, m in mask.items():
                if registered.get(fd) != m:
                    poller.register(fd, m)  # registering again modifies
            registered = mask
            events = dict(poller.poll(min(waits) * 1000.0))
            now = time.monotonic()
            if self.wake_r in events:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            # Line first: bytes the host sent before a command reach the MCU before it acts.
            self.line.pump(now, events)
            if self._client is not None and self.line.host_hung_up():
                self._drop_client("client hung up")
            if self._listener is not None and self._listener.fileno() in events and self._client is None:
                self._accept()
            if self.ctl_out is not None and self.ctl_out in events:
                self._read_ctl(now)
            if self.proc is not None and self.proc.poll() is not None:
                self._on_device_exit(now)
            if self.cmd_fd in events:
                self._read_cmds(now)
            self._timers(now)
            if now - self._state_written_t >= _STATE_REFRESH_S and self.line.stats() != self._state_line_stats:
                self.write_state()

    # -- remote access (FR6) ----------------------------------------------------------------
    def _listen(self, port: int) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            ls.bind(("127.0.0.1", port))
        except OSError as e:
            ls.close()
            raise SimError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
        ls.listen(4)
        ls.setblocking(False)
        self._listener = ls
        self.tcp_port = ls.getsockname()[1]  # port 0 asks for any free one
        self.log(f"listening on 127.0.0.1:{self.tcp_port}")

    def _accept(self) -> None:
        try:
            conn, peer = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self._client_peer = conn, f"{peer[0]}:{peer[1]}"
        self.line.attach_host(conn.fileno())
        self.log(f"tcp client {self._client_peer} connected")
        self.write_state()

    def _drop_client(self, why: str) -> None:
        self.line.detach_host()
        self.log(f"tcp client {self._client_peer} gone ({why})")
        self._client.close()
        self._client = self._client_peer = None
        self.write_state()

    def shutdown(self) -> None:
        if self._stop_signal is not None:
            self.log(f"stopping on signal {signal.Signals(self._stop_signal).name}")
        if self._client is not None:
            self._drop_client("supervisor stopping")
        if self._listener is not None:
            self._listener.close()
        self.kill_device("supervisor stopping")
        self.pending_boot = None
        if self._lock_fd is not None and self.port:
            self.write_state("stopped")
        # A dangling link could later lead a host tool to some other program's terminal.
        for name, port in ((TTY_LINK, self.port), (USB_LINK, self.usb_port)):
            link = self.dir / name
            if port and link.is_symlink() and os.readlink(link) == port:
                link.unlink()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.log("supervisor stopped")
        self._log_f.close()


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


# --------------------------------------------------------------------------------------------
# The client side: start, stop, status, commands
# --------------------------------------------------------------------------------------------

# Supervisors started by this process, so stop() can reap them (else they linger as zombies).
_STARTED: dict[int, subprocess.Popen] = {}


def _device_script(device_script) -> Path | None:
    chosen = device_script or os.environ.get(DEVICE_SCRIPT_ENV)
    return Path(chosen).expanduser().resolve() if chosen else None


def read_state(sim_dir) -> dict:
    return _read_json(_resolve_dir(sim_dir) / STATE_JSON) or {}


def is_running(sim_dir) -> bool:
    return _lock_held(_resolve_dir(sim_dir))


def start(sim_dir, *, image=None, keys=None, baud=None, interval_s=None, seed=None,
          serial=None, device_script=None, uart_loss=None, tcp_port=None, board=None,
          firmware=None, bootrom=None, defaults=None, load=None) -> dict:
    """Provision DIR if needed, record the run config and start a detached supervisor.

    `board="pico"` runs the stock MicroPython firmware (`firmware`, a UF2; default $PICO_FIRMWARE)
    on the emulated RP2040, with the RP2040 boot ROM (`bootrom`; default beside the firmware).
    `defaults` are board defaults a pico's /board/board.json is provisioned with (the sim reads
    its overrides from sim.json at every boot instead).
    `load` is the premises' load profile (hil.metrology.PROFILES; kept in sim.json like the seed).
    Returns what `meterfw-sim start` prints: port, pid, dir, baud, serial, device_pid, board,
    and usb_port for a pico.
    """
    given = str(sim_dir)
    if load is not None:
        _load_curve(load)  # a bad name stops here, before anything is made or started
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
            serial = _provision_pico(flash, cfg["pico"], image, keys, serial, defaults)
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
                       ("uart_loss", uart_loss), ("tcp_port", tcp_port), ("load", load)):
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


def default_firmware() -> Path | None:
    """The Pico firmware the rig uses when none is given: $PICO_FIRMWARE, else the one a
    developer's checkout finds beside it (../shared/rp2/)."""
    env = os.environ.get(FIRMWARE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    found = REPO.parent / "shared" / "rp2" / "RPI_PICO-v1.28.0.uf2"
    return found if found.is_file() else None


NO_FIRMWARE = ("no Pico firmware: download the RPI_PICO UF2 of MicroPython v1.28 from "
               "micropython.org and give it with --firmware PATH (or PICO_FIRMWARE=PATH), with the "
               f"RP2040 boot ROM ({BOOTROM_NAME}, from raspberrypi/pico-bootrom) beside it")


def _pico_config(firmware, bootrom, known: dict | None) -> dict:
    """What the emulator needs to know: the firmware and boot ROM files, the flash chip's size
    and timing, and where the board's RTC and front-end sit (from boards/pico/board.json)."""
    fw = Path(firmware).expanduser().resolve() if firmware else None
    if fw is None and known:
        fw = Path(known["firmware"])
    fw = fw or default_firmware()
    if fw is None or not fw.is_file():
        raise SimError(NO_FIRMWARE if fw is None else f"Pico firmware {fw} not found", 2)
    rom = Path(bootrom or os.environ.get(BOOTROM_ENV) or fw.parent / BOOTROM_NAME).expanduser().resolve()
    if not bootrom and not rom.is_file() and default_firmware() is not None:
        rom = default_firmware().parent / BOOTROM_NAME  # a meter UF2 made elsewhere: the stock one's
    if not rom.is_file() or rom.stat().st_size != 16384:
        raise SimError(f"no RP2040 boot ROM at {rom} (16 KiB, {BOOTROM_NAME}); give --bootrom PATH", 2)
    cfg = json.loads((REPO / "boards" / "pico" / "board.json").read_text())
    flash, rtc = cfg["flash"], cfg["rtc"]
    return {
        "firmware": str(fw), "bootrom": str(rom),
        "flash_bytes": flash["offset"] + flash["block_size"] * flash["block_count"],
        "erase_ms": flash["erase_ms"], "page_program_ms": flash["page_program_ms"],
        "rtc_i2c": rtc["i2c"], "rtc_addr": int(rtc["addr"], 16), "ade_cs": cfg["metrology"]["cs"],
    }


def _provision_pico(flash: Path, pico: dict, image, keys, serial, defaults: dict) -> str | None:
    """The whole flash of a Pico. Without an image: a blank Pico with the UF2 dragged onto it,
    which may be the stock firmware alone (MicroPython formats the filesystem at its first boot:
    ready for `meterfw provision`) or a meter made by `meterfw uf2`. With an image: the firmware
    and the meter's filesystem, provisioned here with the board defaults given."""
    from meterfw.errors import CommandError
    from meterfw.provision import build_flash, default_serial, device_files
    from meterfw.uf2 import PAYLOAD_BYTES, board_spec, parse_uf2, pico_flash_image

    fw = Path(pico["firmware"]).read_bytes()
    try:
        if image is None:
            spec = board_spec("pico")
            data = bytearray(b"\xff" * spec["flash_bytes"])
            for offset, payload in parse_uf2(fw, spec["family"], spec["flash_bytes"]).items():
                data[offset:offset + PAYLOAD_BYTES] = payload
            flash.write_bytes(bytes(data))
            return serial
        if keys is None:
            raise SimError("give --keys with --image to provision a meter", 2)
        img = Path(image).read_bytes()
        serial = serial or default_serial(img, str(flash.resolve()))
        files = device_files(img, Path(keys), "pico", serial)
        board_json = json.loads(files["/board/board.json"])
        board_json["defaults"].update({k: v for k, v in defaults.items() if v is not None})
        files["/board/board.json"] = json.dumps(board_json).encode()
        flash.write_bytes(pico_flash_image(fw, build_flash(files, "pico"), "pico"))
    except CommandError as e:
        raise SimError(str(e), 2) from None
    return serial


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
    }


def command(sim_dir, cmd: str, *args, timeout_s: float = COMMAND_TIMEOUT_S) -> dict:
    """Send `cmd` to DIR's supervisor and wait until it has acted; returns the new state."""
    d = _resolve_dir(sim_dir)
    if not _lock_held(d):
        raise SimError(f"{d} is not running")
    token = secrets.token_hex(6)
    line = " ".join([cmd, token, *map(str, args)]) + "\n"
    try:
        fd = os.open(d / CMD_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            raise SimError(f"{d} is not running") from None
        raise
    try:
        os.write(fd, line.encode())  # shorter than PIPE_BUF, so it arrives whole
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = read_state(d)
        if token in st.get("acks", ()):
            return st
        if not _lock_held(d):
            raise SimError(f"supervisor for {d} stopped before acting on {cmd}")
        time.sleep(0.01)
    raise SimError(f"supervisor for {d} did not act on {cmd} within {timeout_s:.0f} s")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meterfw-sim",
        description="Run a simulated Pico meter: power, reset, watchdog and a serial port.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("start", help="start (provisioning first if needed) a sim meter in DIR")
    s.add_argument("--dir", required=True, help="the sim meter's directory")
    s.add_argument("--image", help="image to provision a new flash.img with")
    s.add_argument("--keys", help="key directory for provisioning")
    s.add_argument("--baud", type=int, help="pace the line at 8N1 for this baud rate")
    s.add_argument("--interval-s", type=_number, help="metering interval (default: the board's)")
    s.add_argument("--seed", type=int, help="metrology seed (default 1)")
    s.add_argument("--load", metavar="PROFILE",
                   help="the premises' load on the metrology front-end (default mixed, or what DIR "
                        "had): mixed (0.7-2.2 kW with bursts of export), residential (night base "
                        "load, morning and evening peaks), vacant (no energy at all), solar (a "
                        "home with rooftop PV: export around midday), commercial (near the "
                        "meter's 24 kW rating in business hours). Daily curves run on UTC, or "
                        "on the premises' local time with PROFILE@+HH:MM")
    s.add_argument("--serial", help="meter serial number")
    s.add_argument("--uart-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="model an RP2040 UART: bytes arriving while flash is busy are lost beyond "
                        "its 32-byte FIFO (default: a USB-CDC link, which loses nothing)")
    s.add_argument("--tcp", type=int, metavar="PORT",
                   help="also listen on 127.0.0.1:PORT and bridge one client at a time to the line "
                        "(remote access; 0 picks a free port)")
    s.add_argument("--board", choices=BOARDS, help="sim (the unix port, default) or pico (the stock "
                   "MicroPython firmware on an emulated RP2040)")
    s.add_argument("--firmware", help="pico: the MicroPython RPI_PICO UF2 (default $PICO_FIRMWARE)")
    s.add_argument("--bootrom", help=f"pico: the RP2040 boot ROM (default $PICO_BOOTROM, or {BOOTROM_NAME} "
                   "beside the firmware or $PICO_FIRMWARE)")
    s.add_argument("--device-script", help=argparse.SUPPRESS)

    for name, text in (
        ("stop", "stop the supervisor and its device"),
        ("status", "show whether the sim meter runs, its boots and watchdog"),
        ("power-cycle", "cut the power now and switch it on again"),
        ("reset", "press the reset button"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--dir", required=True)
        c.add_argument("--json", action="store_true", help="print JSON")
        if name == "power-cycle":
            c.add_argument("--off-s", type=float, default=0.0, help="how long the power stays off")

    r = sub.add_parser("run", help="run the supervisor in the foreground (what start detaches)")
    r.add_argument("--dir", required=True)
    r.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    r.add_argument("--device-script", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "start":
            info = start(
                args.dir, image=args.image, keys=args.keys, baud=args.baud,
                interval_s=args.interval_s, seed=args.seed, serial=args.serial,
                device_script=args.device_script, uart_loss=args.uart_loss, tcp_port=args.tcp,
                board=args.board, firmware=args.firmware, bootrom=args.bootrom, load=args.load,
            )
            print(json.dumps(info), flush=True)
        elif args.cmd == "stop":
            stopped = stop(args.dir)
            if args.json:
                print(json.dumps({"dir": str(_resolve_dir(args.dir)), "stopped": stopped}))
            elif not stopped:
                print(f"meterfw-sim: {args.dir} is not running; nothing to stop")
        elif args.cmd == "status":
            st = status(args.dir)
            if args.json:
                print(json.dumps(st))
            else:
                wdt = f"armed ({st['watchdog_timeout_ms']} ms)" if st["watchdog_armed"] else "not armed"
                print(f"{st['dir']}: {st['state']}")
                print(f"  supervisor pid  {st['pid']}")
                print(f"  board           {st['board']}")
                print(f"  port            {st['port']}")
                if st["usb_port"]:
                    print(f"  usb port (REPL) {st['usb_port']}")
                print(f"  boots           {st['boots']} (last cause: {st['last_cause']})")
                print(f"  device pid      {st['device_pid']}")
                print(f"  watchdog        {wdt}")
        elif args.cmd in ("power-cycle", "reset"):
            extra = (args.off_s,) if args.cmd == "power-cycle" else ()
            st = command(args.dir, args.cmd, *extra)
            if args.json:
                print(json.dumps({k: st.get(k) for k in ("state", "boots", "last_cause", "device_pid")}))
            else:
                print(f"{args.cmd}: boot {st.get('boots')} (cause {st.get('last_cause')}), device pid {st.get('device_pid')}")
        elif args.cmd == "run":
            d = _resolve_dir(args.dir)
            if not d.is_dir():
                raise SimError(f"{args.dir} is not a directory")
            board = (_read_json(d / SIM_JSON) or {}).get("board", "sim")
            script = _device_script(args.device_script) or (PICO_EMULATOR if board == "pico" else DEFAULT_DEVICE_SCRIPT)
            return run(d, script, args.ready_fd)
    except SimError as e:
        print(f"meterfw-sim: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
