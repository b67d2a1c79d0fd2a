"""The control protocol, both channels and both ends of the command channel: the ctl lines the
device writes on its fd 3 (w/cut/feed/wdt/clock/watchdog/reset/log), and the commands that
`meterfw-sim power-cycle|reset`, hil.sim.SimBoard and the tests write to DIR/supervisor.fifo
as `COMMAND TOKEN ARGS...`, each acknowledged by TOKEN in state.json's `acks`."""

from __future__ import annotations

import errno
import os
import secrets
import time

from .common import (
    CMD_FIFO, COMMAND_TIMEOUT_S, POWER_ON, RESET, RESET_GRACE_S, WATCHDOG, SimError,
    _lock_held, _resolve_dir, read_state,
)

_PAUSE_S = 0.5  # a gap between two flash operations this long is recorded as a pause


class ControlProtocol:
    """The Supervisor's side of both channels (a mixin: the state lives in Supervisor)."""

    def _open_command_fifo(self) -> None:
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
        elif cmd == "han-reload":
            # `meterfw-sim han add|remove` changed DIR/han.json: the medium reads it again.
            if self.han is not None:
                self.han.reload()
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


# -- the client's end of the command channel -------------------------------------------------
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
