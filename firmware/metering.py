# Metering: intervals closed on wall-clock boundaries from the metrology front-end's own
# accumulator. Σ interval energy = register delta = front-end delta, by construction: each
# interval is the difference of two front-end readings, and the next opens where it closed.
import asyncio
import struct
from binascii import crc32
from micropython import const
from intervals import IntervalLog, POWER_DOWN, ESTIMATED, PARTIAL

_OPEN = "/data/open"
_OPEN_FMT = "<IQQH"  # start_s frontend_mwh register_mwh flags
_OPEN_BODY = const(22)
_LATE_POWER_DOWN_MS = const(2000)  # a close this late means the MCU was not running


class Metering:
    def __init__(self, board):
        self._board = board
        self.interval_s = board.defaults["interval_s"]
        self.log = IntervalLog()
        self.closed = asyncio.Event()
        self.late_ms = []  # lateness of the most recent closes, for the rig's benchmarks
        self.closes = 0
        self._restore()

    def _restore(self):
        last = self.log.last
        saved = self._load_open()
        if saved and (last is None or saved[0] == last[1] + last[2]):
            self.open_start_s, self.open_mwh, self.register_mwh, self.open_flags = saved
        elif last:
            self.open_start_s = last[1] + last[2]
            self.open_mwh, self.register_mwh = last[6], last[5]
            self.open_flags = 0
        else:  # factory-fresh meter: the first interval is partial
            now_s = self._board.clock.time_ms() // 1000
            self.open_start_s = now_s - now_s % self.interval_s
            self.open_mwh = self._board.energy_mwh()
            self.register_mwh = 0
            self.open_flags = PARTIAL
            self._save_open()

    def _load_open(self):
        try:
            with open(_OPEN, "rb") as f:
                buf = f.read()
        except OSError:
            return None
        if len(buf) != _OPEN_BODY + 4 or struct.unpack_from("<I", buf, _OPEN_BODY)[0] != crc32(buf[:_OPEN_BODY]):
            return None
        return struct.unpack_from(_OPEN_FMT, buf, 0)

    def _save_open(self):
        buf = bytearray(_OPEN_BODY + 4)
        struct.pack_into(_OPEN_FMT, buf, 0, self.open_start_s, self.open_mwh, self.register_mwh, self.open_flags)
        struct.pack_into("<I", buf, _OPEN_BODY, crc32(memoryview(buf)[:_OPEN_BODY]))
        with open(_OPEN, "wb") as f:
            f.write(buf)

    def mark(self, flags):
        """Flag the open interval (firmware change, clock set); persisted at once."""
        if self.open_flags | flags != self.open_flags:
            self.open_flags |= flags
            self._save_open()

    def live_register_mwh(self):
        return self.register_mwh + self._board.energy_mwh() - self.open_mwh

    def _close(self, late_ms):
        reading = self._board.energy_mwh()
        flags = self.open_flags
        if late_ms > _LATE_POWER_DOWN_MS:
            flags |= POWER_DOWN | ESTIMATED
        energy = reading - self.open_mwh
        self.register_mwh += energy
        self.log.append(self.open_start_s, self.interval_s, flags, energy, self.register_mwh, reading)
        self.open_start_s += self.interval_s
        self.open_mwh = reading
        self.open_flags = 0
        self.late_ms.append(late_ms)
        del self.late_ms[:-64]
        self.closes += 1
        self.closed.set()
        self.closed.clear()

    async def run(self):
        while True:
            due_ms = (self.open_start_s + self.interval_s) * 1000 - self._board.clock.time_ms()
            if due_ms > 0:
                # Re-check at least every second so a clock change is noticed promptly.
                await asyncio.sleep_ms(min(due_ms, 1000))
            else:
                # Intervals missed while the MCU was down close here at once, in order.
                self._close(-due_ms)
