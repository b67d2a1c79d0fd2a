"""The supervisor process: its state (state.json, supervisor.log), set-up, event loop and
shutdown. What it does at each event lives in the mixins: power (the device process, reset,
watchdog, power cuts), control (ctl lines and commands) and bridge (ptys and the TCP client)."""

from __future__ import annotations

import collections
import ctypes
import fcntl
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

from hil.line import Line
from hil.nan import NETWORK_ID, Collector, parse_network

from .bridge import ClientBridge
from .common import (
    DEFAULT_DEVICE_SCRIPT, LOCK_FILE, PICO_RIG, RESET, SIM_JSON, STATE_JSON, SUPERVISOR_LOG, TTY_LINK, USB_LINK,
    SimError, _heap_bytes, _micropython, _read_json, _write_json_atomic,
)
from .control import ControlProtocol
from .power import PowerControl, compile_models

_STATE_REFRESH_S = 1.0  # line counters in state.json are refreshed at most this often
_IDLE_WAKE_S = 0.5


class Supervisor(PowerControl, ControlProtocol, ClientBridge):
    """The supervisor of one sim directory; run() drives it from start to shutdown."""

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
        # The simulated HAN (hil/supervisor/han.py), when the meter has a HAN radio (sim.json han
        # "ok", or "fail": fitted but dead), and our ends of the radio's pipes (the sim's fds 5
        # and 6, the emulated Pico's 6 and 7: its UART1, the HAN co-processor's line).
        self.han = None
        self.radio_in: int | None = None
        self.radio_out: int | None = None
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
        if self.board == "sim" and self.device_script == DEFAULT_DEVICE_SCRIPT:
            compile_models(self.dir)
        if self.board == "pico" and not (PICO_RIG / "node_modules" / "rp2040js").is_dir():
            raise SimError(f"the Pico emulator is not installed: run `make setup` (npm ci in {PICO_RIG})")
        if self.cfg.get("han") in ("ok", "fail"):
            from .han import HanMedium

            self.han = HanMedium(self.dir, self.cfg["han"] == "ok", lambda msg: self.log(msg))
        self.write_state("starting")

        self._open_ptys()
        self._open_command_fifo()

        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds += [self.wake_r, self.wake_w]
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        # A handler (even a no-op) is needed for SIGCHLD to reach the wake-up fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

        self._libc = ctypes.CDLL(None, use_errno=True)
        # The emulated Pico's UART paces bytes in emulated time itself. Both boards' meters reach
        # the host through the same NAN collector (hil/nan.py).
        try:
            network = parse_network(self.cfg.get("nan_network", NETWORK_ID))
        except ValueError as e:
            raise SimError(str(e), 2) from None
        nan = Collector(network, lambda msg: self.log(msg))
        self.line = Line(self.user_master, self.dev_master, None if self.board == "pico" else self.baud, nan)
        if self.tcp_port is not None:
            self._listen(int(self.tcp_port))
        self.log(
            f"supervisor up: dir={self.dir} port={self.port} baud={self.baud} "
            f"device={self.device_script} heap={self.heap_bytes}"
        )

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    # -- the loop ---------------------------------------------------------------------------
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
            if self.radio_in is not None:
                mask[self.radio_in] = select.POLLIN
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
            if self.radio_in is not None and self.radio_in in events:
                self._read_radio()
            if self.proc is not None and self.proc.poll() is not None:
                self._on_device_exit(now)
            if self.cmd_fd in events:
                self._read_cmds(now)
            self._timers(now)
            if now - self._state_written_t >= _STATE_REFRESH_S and self.line.stats() != self._state_line_stats:
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
