"""A Python API over meterfw-sim: start a simulated meter, drive its power and reset, read its
state. It runs the same code as the CLI (hil.supervisor), so the supervisor is detached in the
same way; the board keeps running until `stop()` (or the `with` block ends).

    with SimBoard.start(tmp / "m1", image="app.mfw", keys="keys/") as board:
        link = serial.Serial(board.port, timeout=2)
        board.power_cycle()
        board.wait_boots(2)
"""

from __future__ import annotations

import time
from pathlib import Path

from hil import supervisor as _sup
from hil.supervisor import SimError, pid_alive  # noqa: F401 - re-exported for the fixtures

__all__ = ["SimBoard", "SimError", "pid_alive"]


class SimBoard:
    def __init__(self, sim_dir: Path, info: dict):
        self.dir = Path(info.get("dir") or sim_dir)
        self.port: str = info["port"]
        self.pid: int = info["pid"]
        self.serial: str | None = info.get("serial")
        self.baud: int | None = info.get("baud")
        self.first_device_pid: int | None = info.get("device_pid")
        self.board: str = info.get("board", "sim")
        self.usb_port: str | None = info.get("usb_port")  # a pico's USB CDC port (its REPL)

    @classmethod
    def start(cls, sim_dir, *, image=None, keys=None, baud=None, interval_s=None, seed=None,
              serial=None, device_script=None, load=None, **pico) -> "SimBoard":
        """Provision (if DIR has no flash.img and image/keys are given) and start a sim meter.

        `device_script` replaces boards/sim/power_on.py; it is for the supervisor's own tests.
        `board="pico"` (with `firmware`, `bootrom`, `defaults`) starts the emulated Pico instead.
        `load` is the premises' load profile (hil.metrology; default `mixed`, or what DIR had).
        """
        info = _sup.start(
            sim_dir, image=image, keys=keys, baud=baud, interval_s=interval_s, seed=seed,
            serial=serial, device_script=device_script, load=load, **pico,
        )
        return cls(Path(sim_dir), info)

    # -- power and reset --------------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the supervisor and the device; False if it was already stopped."""
        return _sup.stop(self.dir)

    def power_cycle(self, off_s: float = 0.0) -> dict:
        """Cut the power now; it returns after `off_s`. Returns the state after the new boot."""
        return _sup.command(self.dir, "power-cycle", off_s, timeout_s=_sup.COMMAND_TIMEOUT_S + off_s)

    def power_off(self) -> dict:
        """Cut the power and keep it off (a planned cut is dropped) until power_on(): meanwhile
        the board's files (flash.img, rtc.json, ...) may be changed, as on a bench."""
        return _sup.command(self.dir, "power-off")

    def power_on(self) -> dict:
        """Switch the power on again after power_off(). Returns the state after the boot."""
        return _sup.command(self.dir, "power-on")

    def reset(self) -> dict:
        """Press the reset button. Returns the state after the new boot."""
        return _sup.command(self.dir, "reset")

    def cut_at(self, n: int, torn: bool = False) -> dict:
        """Cut the power at the device's nth flash operation from now (tearing it if asked)."""
        return _sup.command(self.dir, "cut", n, "torn" if torn else "clean")

    def emulated_us(self) -> tuple[int, int] | None:
        """An emulated Pico's clock now: (its time since power-on, the wall time since), in us.
        Host-side spans measured with it are Pico time. None on the sim, whose clock is the host's."""
        st = _sup.command(self.dir, "clock")
        return None if st.get("emulated_us") is None else (st["emulated_us"], st["emulated_wall_us"])

    def flash_ops(self) -> int:
        """Flash erases and programs the device has done, over all its boots."""
        return _sup.command(self.dir, "sync")["flash_ops"]

    # -- observing --------------------------------------------------------------------------
    def state(self) -> dict:
        return _sup.read_state(self.dir)

    def status(self) -> dict:
        return _sup.status(self.dir)

    @property
    def device_pid(self) -> int | None:
        return self.state().get("device_pid")

    def running(self) -> bool:
        return _sup.is_running(self.dir)

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> dict:
        """Poll state.json until `predicate(state)` holds; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            if st and predicate(st):
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sim {self.dir}: no {what} within {timeout} s; state {st}")
            time.sleep(0.02)

    def wait_boots(self, n: int, timeout: float = 10.0) -> dict:
        """Wait until the board has booted at least `n` times in all; returns the state."""
        return self.wait_for(
            lambda st: st.get("boots", 0) >= n and st.get("device_pid"), timeout, f"boot {n}"
        )

    def wait_state(self, name: str, timeout: float = 10.0) -> dict:
        return self.wait_for(lambda st: st.get("state") == name, timeout, f"state {name}")

    def console(self) -> str:
        """The MCU's debug UART (the device's stderr), all boots."""
        return _read_text(self.dir / _sup.CONSOLE_LOG)

    def supervisor_log(self) -> str:
        return _read_text(self.dir / _sup.SUPERVISOR_LOG)

    def __enter__(self) -> "SimBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimBoard(dir={str(self.dir)!r}, port={self.port!r}, pid={self.pid})"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
