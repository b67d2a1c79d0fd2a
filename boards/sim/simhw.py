# The simulated silicon of a Pico meter: what the C firmware and the chips give a real board.
# Loaded by power_on.py from the host before the flash filesystem is mounted, so it may hold
# host file handles; the board HAL (/board/hal.py on the device filesystem) is its only user.
import json
import sys
import time
from micropython import const

_ERASE_IOCTL = const(6)
_COUNT_IOCTL = const(4)
_SIZE_IOCTL = const(5)

# Reset causes as the supervisor passes them in argv.
POWER_ON = "power-on"
WATCHDOG = "watchdog"
RESET = "reset"

_hw = None


def hardware():
    return _hw


class FlashError(OSError):
    pass


class NorFlash:
    """Block device over an image file, with NOR rules and W25Q16JV timing.

    Erase sets 0xFF; a program may only go to erased bytes (a real part would just AND the
    bits in, silently corrupting data, so writing unerased bytes is treated as a bug here).
    """

    def __init__(self, path, geometry, ctl):
        self._f = open(path, "r+b")
        self._bs = geometry["block_size"]
        self._n = geometry["block_count"]
        self._erase_ms = geometry.get("erase_ms", 0)
        self._page_us = int(geometry.get("page_program_ms", 0) * 1000)
        self._page = geometry.get("page_size", 256)
        self._ctl = ctl
        self._ff = b"\xff" * self._bs
        self._check = bytearray(self._bs)
        self.writes = 0  # erases plus programs since power-on
        self.busy_hook = None  # the UART model wants to know when the CPU was stalled
        self._ensure_size()

    def _ensure_size(self):
        self._f.seek(0, 2)
        size = self._f.tell()
        want = self._bs * self._n
        while size < want:  # a fresh chip reads erased; chunked to stay inside the heap
            self._f.write(self._ff)
            size += self._bs

    def readblocks(self, block, buf, off=0):
        self._f.seek(block * self._bs + off)
        self._f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:  # the simple block interface erases implicitly
            self.ioctl(_ERASE_IOCTL, block)
            off = 0
        n = len(buf)
        pos = block * self._bs + off
        check = memoryview(self._check)[:n]
        self._f.seek(pos)
        self._f.readinto(check)
        if check != memoryview(self._ff)[:n]:
            self._ctl.send("log flash: program over unerased bytes at %d" % pos)
            raise FlashError(5)
        self._cut_point(block, off, buf)
        self._f.seek(pos)
        self._f.write(buf)
        self._stall(self._page_us * ((n + self._page - 1) // self._page) // 1000)

    def ioctl(self, op, arg):
        if op == _COUNT_IOCTL:
            return self._n
        if op == _SIZE_IOCTL:
            return self._bs
        if op == _ERASE_IOCTL:
            self._cut_point(arg, 0, None)
            self._f.seek(arg * self._bs)
            self._f.write(self._ff)
            self._stall(self._erase_ms)
            return 0
        return 0

    def _cut_point(self, block, off, buf):
        self.writes += 1

    def _stall(self, ms):
        if ms > 0:
            t0 = time.ticks_ms()
            time.sleep_ms(ms)
            if self.busy_hook:
                self.busy_hook(t0, ms)


class Metrology:
    """Front-end energy accumulator, like an ADE7953: it counts on while the MCU reboots.

    Energy per whole second is a pure function of the seed and the true time, so the host
    computes the same total independently (hil/metrology.py holds the CPython twin).
    """

    def __init__(self, seed, created_s):
        self._seed = seed
        self._t = created_s
        self._mwh = 0

    @staticmethod
    def mwh_in_second(seed, s):
        x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 1103515245) & 0xFFFFFFFF
        return 200 + (x >> 8) % 401  # 0.72 to 2.16 kW

    def energy_mwh(self):
        now = int(time.time())
        while self._t < now:
            self._mwh += self.mwh_in_second(self._seed, self._t)
            self._t += 1
        return self._mwh


class Ctl:
    """Line channel to the supervisor: watchdog, reset and log messages."""

    def __init__(self, out_fd, in_fd):
        self._out = open("/dev/fd/%d" % out_fd, "wb")
        self._in = open("/dev/fd/%d" % in_fd, "rb")

    def send(self, line):
        self._out.write(line.encode() + b"\n")


class Hardware:
    def __init__(self, sim_dir, reset_cause, ctl_out_fd, ctl_in_fd, board_json):
        with open(board_json) as f:
            self.board = json.load(f)
        with open(sim_dir + "/sim.json") as f:
            self.sim = json.load(f)
        self.reset_cause = reset_cause
        self.ctl = Ctl(ctl_out_fd, ctl_in_fd)
        self.flash = NorFlash(sim_dir + "/flash.img", self.board["flash"], self.ctl)
        self.metrology = Metrology(self.sim.get("seed", 1), self.sim["created_s"])
        self.clock_offset_ms = int(self.sim.get("clock_offset_s", 0) * 1000)
        self.stdin = sys.stdin.buffer
        self.stdout = sys.stdout.buffer

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
