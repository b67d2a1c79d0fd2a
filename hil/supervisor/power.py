"""Power and process control: each boot's device process (the unix port or the Pico emulator)
and its ctl pipes, killing it (power cuts, the reset pin, the watchdog), what follows its exit,
and the timers for watchdog, reset and delayed power-on."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import termios
import time
from pathlib import Path

from meterfw.image import compile_module

from .common import (BOARD_DIR, CONSOLE_LOG, DEFAULT_DEVICE_SCRIPT, HW_DIR, RESET, RESET_GRACE_S, WATCHDOG,
                     _ensure_open, _node)

_PR_SET_PDEATHSIG = 1


def compile_models(sim_dir: Path) -> None:
    """The sim board's models (boards/sim/*.py but its HAL, which provisioning puts on the flash)
    compiled into sim_dir/hw as the meter's own code is, with the board's board.json."""
    hw = sim_dir / HW_DIR
    hw.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="meterfw-hw-") as tmp:
        for src in sorted(BOARD_DIR.glob("*.py")):
            if src.name != "hal.py":
                (hw / f"{src.stem}.mpy").write_bytes(compile_module(src, f"{HW_DIR}/{src.stem}.mpy", Path(tmp)))
    shutil.copyfile(BOARD_DIR / "board.json", hw / "board.json")


class PowerControl:
    """The Supervisor's power, reset and watchdog (a mixin: the state lives in Supervisor)."""

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
        # The HAN radio's transmit and receive (the sim's radio, or the emulated Pico's UART1 to
        # its co-processor), the medium's ends non-blocking, and its receive too (the meter polls
        # it, as it would its radio's UART; the emulator reads it through its event loop).
        radio = None
        if self.han is not None:
            tx_r, tx_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            rx_r, rx_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            radio = (fcntl.fcntl(tx_w, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(rx_r, fcntl.F_DUPFD_CLOEXEC, 10))
            os.close(tx_w)
            os.close(rx_r)

        radio_fds = (6, 7) if pico else (5, 6)  # a pico's 5 is its USB port

        def in_child() -> None:
            os.dup2(child_out, 3)
            os.dup2(child_in, 4)
            if usb is not None:
                os.dup2(usb, 5)
            if radio is not None:
                os.dup2(radio[0], radio_fds[0])
                os.dup2(radio[1], radio_fds[1])
            # If the supervisor dies (even by SIGKILL) the MCU loses power with it.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        if pico:
            argv = [_node(), str(self.device_script), str(self.dir), device_cause or cause, "3", "4", "5"]
            argv += [str(fd) for fd in radio_fds] if radio else []
        else:
            # The sim board's models run compiled (hw/, see compile_models) and every path is
            # relative to the sim's folder: host paths in module names and arguments would move
            # the heap's layout, and a near-full heap's outcome, with where the folder is.
            script = ["-m", self.device_script.stem] if self.device_script == DEFAULT_DEVICE_SCRIPT \
                else [str(self.device_script)]
            argv = [self.micropython, "-X", f"heapsize={self.heap_bytes}", *script, ".", cause, "3", "4"]
        fds = (3, 4) + ((5,) if pico else ()) + (radio_fds if radio else ())
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
                    env={**os.environ, "MICROPYPATH": HW_DIR},  # where -m finds the models
                    start_new_session=True, close_fds=True,
                )
            finally:
                os.close(child_out)
                os.close(child_in)
                for fd in radio or ():
                    os.close(fd)
        self.ctl_out, self.ctl_in = out_r, in_w
        if radio is not None:
            self.radio_in, self.radio_out = tx_r, rx_w
            self._radio_buf = b""
            self.han.send = self._radio_send
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
        for fd in (self.ctl_out, self.ctl_in, self.radio_in, self.radio_out):
            if fd is not None:
                os.close(fd)
        self.ctl_out = self.ctl_in = self.radio_in = self.radio_out = None
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

    # -- the HAN radio's pipes --------------------------------------------------------------
    def _radio_send(self, line: str) -> None:
        if self.radio_out is not None:
            try:
                os.write(self.radio_out, line.encode() + b"\n")
            except BlockingIOError:
                self.log(f"han: the meter's radio is not reading; frame lost: {line!r}")

    def _read_radio(self) -> None:
        while self.radio_in is not None:
            try:
                chunk = os.read(self.radio_in, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._radio_buf += chunk
        *lines, self._radio_buf = self._radio_buf.split(b"\n")
        for raw in lines:
            self.han.on_line(raw.decode(errors="replace").strip())

    # -- timers -----------------------------------------------------------------------------
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
