"""meterfw-sim: the host process that plays power, reset, watchdog and the serial line for a
simulated Pico meter.

One supervisor per sim directory DIR. It owns two pseudo-terminal pairs: the user pty, whose
slave path is the `port` host tools open like /dev/ttyACM0 (DIR/tty links to it), and the device
pty, whose slave is the MicroPython process's stdin/stdout. hil.line bridges the two masters.
Each boot runs one MicroPython unix-port process, in DIR:

    MICROPYPATH=hw micropython -X heapsize=H -m power_on . <reset_cause> 3 4

(a --device-script runs as `micropython -X heapsize=H SCRIPT . ...`). The sim board's models
(boards/sim/*.py but the HAL) are compiled into DIR/hw at start, as the meter's own code is, and
every path is relative: a host path in a module's name or an argument would move the heap's
layout with where DIR and the repository are. Its stderr is appended to DIR/console.log (the
MCU's debug UART), fd 3 is the write end of the "ctl out" pipe (wdt/feed/reset/log lines from
the device) and fd 4 the read end of "ctl in".

Files in DIR: flash.img (the board's flash, never removed), hw/ (the compiled models), sim.json
(run config, also read by the device), state.json (the supervisor's state, rewritten
atomically), supervisor.log, console.log, supervisor.fifo (commands from `meterfw-sim
power-cycle|reset`) and supervisor.lock (held by the running supervisor; the source of truth
for "is it running").

The client side (start/stop/status/commands) lives in this package too so the CLI and
hil.sim.SimBoard run the same code. The modules:

    common   paths, DIR's file names, SimError, JSON/process/lock helpers both sides use
    daemon   the Supervisor: its state, set-up, event loop and shutdown
    power    the device process: boot, power cuts, reset, watchdog (a Supervisor mixin)
    control  the ctl lines from the device and the command FIFO, both its ends
    bridge   the ptys and the TCP client bridged to the line (a Supervisor mixin)
    startup  start(), run() (the detached process's side), stop(), status()
    pico     the emulated Pico's firmware, boot ROM, emulator config and flash
    han      the simulated home area network: its devices (DIR/han.json) and the medium the
             sim's HAN radio reaches over the device's fds 5 and 6 (sim.json han: ok or fail)
    cli      `meterfw-sim` (main)
"""

from .cli import main
from .common import (
    BOARD_DIR, BOARDS, BOOTROM_ENV, BOOTROM_NAME, CMD_FIFO, COMMAND_TIMEOUT_S, CONSOLE_LOG,
    DEFAULT_DEVICE_SCRIPT, DEFAULT_HEAP_BYTES, DEVICE_SCRIPT_ENV, FIRMWARE_ENV, FLASH_IMG,
    LOCK_FILE, PICO_EMULATOR, PICO_RIG, POWER_ON, READY_TIMEOUT_S, REPO, RESET, RESET_GRACE_S,
    SIM_JSON, STATE_JSON, STOP_WAIT_S, SUPERVISOR_LOG, TTY_LINK, USB_LINK, WATCHDOG, SimError,
    is_running, pid_alive, read_state,
)
from .control import command
from .daemon import Supervisor
from .pico import NO_FIRMWARE, default_firmware
from .startup import run, start, status, stop

__all__ = [
    "BOARD_DIR", "BOARDS", "BOOTROM_ENV", "BOOTROM_NAME", "CMD_FIFO", "COMMAND_TIMEOUT_S",
    "CONSOLE_LOG", "DEFAULT_DEVICE_SCRIPT", "DEFAULT_HEAP_BYTES", "DEVICE_SCRIPT_ENV",
    "FIRMWARE_ENV", "FLASH_IMG", "LOCK_FILE", "NO_FIRMWARE", "PICO_EMULATOR", "PICO_RIG",
    "POWER_ON", "READY_TIMEOUT_S", "REPO", "RESET", "RESET_GRACE_S", "SIM_JSON", "STATE_JSON",
    "STOP_WAIT_S", "SUPERVISOR_LOG", "TTY_LINK", "USB_LINK", "WATCHDOG", "SimError", "Supervisor",
    "command", "default_firmware", "is_running", "main", "pid_alive", "read_state", "run", "start",
    "status", "stop",
]
