# Interval records, appended to segment files under /data/iv within a quota, so meter data
# can never take the space the firmware slots need. Each record carries its own CRC.
import os
import struct
from binascii import crc32
from micropython import const

_DIR = "/data/iv"
_REC = "<IIHHIQQ"  # seq start_s duration_s flags energy_mwh register_mwh frontend_mwh
_BODY = const(32)
SIZE = const(36)
_PER_SEGMENT = const(100)

POWER_DOWN = const(1)
CLOCK_SET = const(2)
FIRMWARE_CHANGE = const(4)
PARTIAL = const(8)
ESTIMATED = const(16)
FLAG_NAMES = ("power-down", "clock-set", "firmware-change", "partial", "estimated")


def flag_names(flags):
    return [n for i, n in enumerate(FLAG_NAMES) if flags & (1 << i)]


def _segment(n):
    return "%s/%06d" % (_DIR, n)


class IntervalLog:
    def __init__(self, max_segments=20):
        self._max = max_segments
        self._buf = bytearray(SIZE)
        try:
            os.mkdir(_DIR)
        except OSError:
            pass
        segs = self._segments()
        self.last = None
        for n in reversed(segs):
            recs = self._read_segment(n)
            if recs:
                self.last = recs[-1]
                break

    def _segments(self):
        return sorted(int(name) for name in os.listdir(_DIR))

    def _read_segment(self, n, since_seq=0):
        out = []
        try:
            with open(_segment(n), "rb") as f:
                buf = self._buf
                while f.readinto(buf) == SIZE:
                    if struct.unpack_from("<I", buf, _BODY)[0] != crc32(memoryview(buf)[:_BODY]):
                        break
                    rec = struct.unpack_from(_REC, buf, 0)
                    if rec[0] >= since_seq:
                        out.append(rec)
        except OSError:
            pass
        return out

    def append(self, start_s, duration_s, flags, energy_mwh, register_mwh, frontend_mwh):
        seq = self.last[0] + 1 if self.last else 1
        rec = (seq, start_s, duration_s, flags, energy_mwh, register_mwh, frontend_mwh)
        struct.pack_into(_REC, self._buf, 0, *rec)
        struct.pack_into("<I", self._buf, _BODY, crc32(memoryview(self._buf)[:_BODY]))
        n = seq // _PER_SEGMENT
        with open(_segment(n), "ab") as f:
            f.write(self._buf)
        self.last = rec
        if seq % _PER_SEGMENT == 0:  # a new segment started: keep within the quota
            segs = self._segments()
            for old in segs[:-self._max]:
                os.remove(_segment(old))
        return rec

    def read(self, since_seq=0, limit=100):
        out = []
        for n in self._segments():
            if (n + 1) * _PER_SEGMENT <= since_seq:
                continue
            out.extend(self._read_segment(n, since_seq))
            if len(out) >= limit:
                break
        return out[:limit]
