# The receive side of an RP2040 UART as MicroPython drives it, standing between the simulated
# board's serial line (a pty) and the link server.
#
# On a Pico the UART interrupt moves bytes from the 32-byte hardware FIFO into MicroPython's
# receive ring buffer. Flash erase and program run with interrupts (and XIP) off, so bytes that
# arrive meanwhile pile up in the FIFO, and everything beyond its 32 bytes is lost
# (micropython #17236). The model: just before a flash stall the "interrupt" drains what has
# arrived into the ring; after the stall, of the bytes that arrived during it the first 32 are
# kept and the rest are dropped and counted. Bytes that wait in the pty while the CPU is merely
# busy are safe, as they are on a Pico, whose interrupt keeps running then.
#
# A USB-CDC link loses nothing (USB has its own flow control): simhw then hands the raw pty to
# the HAL and this module is not used.
import io
import select
from micropython import const

_POLL = const(3)
_GET_FILENO = const(10)
_POLLIN = const(1)
_SCRATCH = const(512)


class Uart(io.IOBase):
    """A pollable stream: readinto() serves the ring first, then the pty."""

    def __init__(self, stream, fifo_bytes, rxbuf_bytes, report):
        self._s = stream  # the raw pty, VMIN=0: readinto returns what is there, maybe nothing
        self._fifo = fifo_bytes
        self._ring = bytearray(rxbuf_bytes)
        self._ring_mv = memoryview(self._ring)
        self._head = 0  # next byte for the application
        self._tail = 0  # end of the bytes held
        self._scratch = bytearray(_SCRATCH)
        self._scratch_mv = memoryview(self._scratch)
        self._poller = select.poll()
        self._poller.register(stream, select.POLLIN)
        self._report = report
        self.lost = 0  # bytes dropped since power-on
        self.lossy_stalls = 0

    # -- the flash seam calls these two ---------------------------------------------------
    def before_stall(self):
        """The interrupt's last chance: what has arrived goes into the ring."""
        while True:
            if self._tail == len(self._ring):
                self._compact()
                if self._tail == len(self._ring):
                    return  # ring full: the rest waits in the pty, as it would on a stalled line
            n = self._s.readinto(self._ring_mv[self._tail:])
            if not n:
                return
            self._tail += n

    def after_stall(self, t0_ms, stall_ms):
        """Interrupts are back: the FIFO's 32 bytes survive, later arrivals were overrun."""
        kept = 0
        dropped = 0
        while True:
            n = self._s.readinto(self._scratch_mv)
            if not n:
                break
            take = min(n, self._fifo - kept)
            if take:
                kept += take
                take = self._put(self._scratch_mv[:take])  # a full ring overruns as well
            dropped += n - take
        if dropped:
            self.lost += dropped
            self.lossy_stalls += 1
            self._report("log uart-loss lost=%d stall_ms=%d total=%d" % (dropped, stall_ms, self.lost))

    # -- the stream the link server reads ----------------------------------------------------
    def readinto(self, buf, nbytes=-1):
        want = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        held = self._tail - self._head
        if held:
            n = min(held, want)
            buf[:n] = self._ring_mv[self._head:self._head + n]
            self._head += n
            if self._head == self._tail:
                self._head = self._tail = 0
            return n
        if want < len(buf):
            return self._s.readinto(memoryview(buf)[:want])
        return self._s.readinto(buf)

    def ioctl(self, req, arg):
        if req == _GET_FILENO:
            # No file descriptor: select then polls through _POLL, so bytes the flash seam moved
            # into the ring wake a reader that is already waiting on the pty.
            return -1
        if req == _POLL:
            ready = 0
            if arg & _POLLIN and (self._tail > self._head or self._poller.poll(0)):
                ready = _POLLIN
            return ready
        return 0

    def _put(self, data):
        if self._tail + len(data) > len(self._ring):
            self._compact()
        n = min(len(data), len(self._ring) - self._tail)
        self._ring_mv[self._tail:self._tail + n] = data[:n]
        self._tail += n
        return n

    def _compact(self):
        held = self._tail - self._head
        if self._head:
            self._ring_mv[:held] = self._ring_mv[self._head:self._tail]
            self._head = 0
            self._tail = held
