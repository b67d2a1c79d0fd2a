# Simulated W25Q16JV NOR flash behind the Pico's filesystem (see simhw.py).
import time
from micropython import const

_ERASE_IOCTL = const(6)
_COUNT_IOCTL = const(4)
_SIZE_IOCTL = const(5)


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
        self.before_busy = None  # ... and to drain what arrived just before the stall
        self._cut_in = None    # flash operations left before a planned power cut
        self._cut_torn = False
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
        """Every erase and program passes here: count it for the rig, and play a power cut
        when one was asked for at this operation (a torn one programs or erases only part)."""
        self.writes += 1
        self._ctl.send("w")
        plan = self._ctl.poll_cut()
        if plan is not None:
            self._cut_in, self._cut_torn = plan
        if self._cut_in is None:
            return
        self._cut_in -= 1
        if self._cut_in > 0:
            return
        if self._cut_torn:
            pos = block * self._bs + off
            self._f.seek(pos)
            if buf is None:  # an interrupted erase leaves the first part erased
                self._f.write(self._ff[: self._bs // 2])
            else:  # an interrupted program has programmed only its first pages
                self._f.write(buf[: max(1, len(buf) // 2)])
        self._ctl.send("cut %s %d" % ("torn" if self._cut_torn else "clean", self.writes))
        while True:  # the power is gone: nothing runs until the supervisor ends this process
            time.sleep(1)

    def _stall(self, ms):
        if ms > 0:
            if self.before_busy:
                self.before_busy()
            t0 = time.ticks_ms()
            time.sleep_ms(ms)
            if self.busy_hook:
                self.busy_hook(t0, ms)
