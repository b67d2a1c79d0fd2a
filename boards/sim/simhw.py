# The simulated silicon of a Pico meter: what the C firmware and the chips give a real board.
# Loaded by power_on.py from the host before the flash filesystem is mounted, so it may hold
# host file handles; the board HAL (/board/hal.py on the device filesystem) is its only user.
import json
import select
import sys
from nor_flash import NorFlash
from metrology import Metrology
from parts import LatchingRelay, DisplayLog, RtcBackup, HanRadio

# Reset causes as the supervisor passes them in argv.
POWER_ON = "power-on"
WATCHDOG = "watchdog"
RESET = "reset"

_hw = None


def hardware():
    return _hw


class Ctl:
    """Line channel to the supervisor: watchdog, reset and log messages."""

    def __init__(self, out_fd, in_fd):
        self._out = open("/dev/fd/%d" % out_fd, "wb")
        self._in = open("/dev/fd/%d" % in_fd, "rb")

        self._poll = select.poll()
        self._poll.register(self._in, select.POLLIN)

    def send(self, line):
        self._out.write(line.encode() + b"\n")

    def poll_cut(self):
        """A `cut N [torn]` request from the supervisor, if one is waiting: (N, torn)."""
        if not self._poll.poll(0):
            return None
        line = b""
        while not line.endswith(b"\n"):
            line += self._in.read(1)
        words = line.split()
        return int(words[1]), len(words) > 2 and words[2] == b"torn"


class Hardware:
    def __init__(self, sim_dir, reset_cause, ctl_out_fd, ctl_in_fd, board_json):
        with open(board_json) as f:
            self.board = json.load(f)
        with open(sim_dir + "/sim.json") as f:
            self.sim = json.load(f)
        self.reset_cause = reset_cause
        self.models_heap = 0  # set by power_on.py once the models are built
        self.ctl = Ctl(ctl_out_fd, ctl_in_fd)
        self.flash = NorFlash(sim_dir + "/flash.img", self.board["flash"], self.ctl)
        # The premises' load: the curve the rig resolved from `load` (None: the `mixed` one).
        self.metrology = Metrology(self.sim.get("seed", 1), self.sim["created_s"], self.sim.get("load_curve"))
        self.clock_offset_ms = int(self.sim.get("clock_offset_s", 0) * 1000)
        # Parts whose state outlives the MCU: relay position, display, the RTC's backed-up setting.
        self.relay = LatchingRelay(sim_dir + "/relay.json")
        self.display = DisplayLog(sim_dir + "/display.log")
        self.rtc = RtcBackup(sim_dir + "/rtc.json")
        # The HAN radio, when the rig fitted one (sim.json han: "ok", or "fail": fitted, dead):
        # the supervisor passes its pipes as fds 5 and 6.
        self.han_radio = HanRadio(5, 6) if self.sim.get("han") in ("ok", "fail") else None
        self.clock_offset_ms += self.rtc.adjust_ms
        self.stdin = sys.stdin.buffer
        self.stdout = sys.stdout.buffer
        self.link_in = self.stdin  # USB-CDC: flow-controlled, nothing is lost
        if self.sim.get("uart_loss"):
            from uart import Uart  # only then: its code would take heap a USB-CDC board does not spend

            link = self.board.get("link", {})
            self.link_in = Uart(self.stdin, self.board.get("uart_fifo_bytes", 32),
                                link.get("rxbuf", 4096), self.ctl.send)
            self.flash.before_busy = self.link_in.before_stall
            self.flash.busy_hook = self.link_in.after_stall
        baud = self.sim.get("baud")
        self.link_bytes_per_s = baud // 10 if baud else None  # 8N1

    def watchdog_arm(self, timeout_ms):
        self.ctl.send("wdt %d" % timeout_ms)

    def watchdog_feed(self):
        self.ctl.send("feed")

    def reset(self):
        self.ctl.send("reset")
        raise SystemExit(0)


def power_on(argv, board_json):
    global _hw
    _hw = Hardware(argv[1], argv[2], int(argv[3]), int(argv[4]), board_json)
    return _hw
