# Interval records, appended to segment files under /data/iv within a quota (oldest segment
# dropped first, and logged), so meter data can never take the space the firmware slots need.
# Each record carries its own CRC. A segment file is named by the sequence number of its first
# record, so a read from a sequence number opens the right file at once. This is what the close
# path and the boot need; reading the log out (the READ_INTERVALS command, the CRC scan) is
# interval_reads.py, loaded for a read.
import os
import struct
from binascii import crc32
from micropython import const
import event_codes

DIR = "/data/iv"
# seq start_s duration_s flags energy_mwh received_mwh register_mwh register_received_mwh
# frontend_mwh frontend_received_mwh (the readings this interval closed at; see metering.py)
_REC = "<IIHHIIqqQQ"
_BODY = const(52)
SIZE = const(56)

POWER_DOWN = const(1)
CLOCK_SET = const(2)
FIRMWARE_CHANGE = const(4)
PARTIAL = const(8)
ESTIMATED = const(16)
REGISTER_RESET = const(32)

# Record fields, by index.
SEQ = const(0)
START = const(1)
DURATION = const(2)
FLAGS = const(3)
ENERGY = const(4)
RECEIVED = const(5)
REGISTER = const(6)
REGISTER_RX = const(7)
FRONTEND = const(8)
FRONTEND_RX = const(9)


class IntervalLog:
    def __init__(self, quota_records=2400, per_segment=100, events=None, path=DIR):
        self._dir = path
        self._per = max(1, per_segment)
        self._quota = max(self._per, quota_records)
        self._events = events
        self._buf = bytearray(SIZE)
        self.bad_records = 0  # damaged records skipped by reads since boot
        try:
            os.mkdir(path)
        except OSError:
            pass
        # The segment files' first sequence numbers, oldest first.
        self.segments = segs = sorted(int(n) for n in os.listdir(path) if n.isdigit())
        self._total = sum(self._size(n) // SIZE for n in segs)
        self.last = None
        self._count = 0  # records in the newest segment
        for i in range(len(segs) - 1, -1, -1):
            recs, whole = self.read_segment(segs[i])
            if i == len(segs) - 1:
                if not whole:
                    self._repair(segs[i])
                self._count = self._size(segs[i]) // SIZE
            if recs:
                self.last = recs[-1]
                break

    def _name(self, first_seq):
        return "%s/%08d" % (self._dir, first_seq)

    def _size(self, first_seq):
        try:
            return os.stat(self._name(first_seq))[6]
        except OSError:
            return 0

    def read_segment(self, first_seq, since_seq=0, limit=1 << 30):
        """(records from since_seq, at most limit, of the segment that starts at first_seq,
        whole): whole is False when the file ends in a torn record."""
        out = []
        whole = True
        try:
            with open(self._name(first_seq), "rb") as f:
                buf = self._buf
                while len(out) < limit:
                    n = f.readinto(buf)
                    if not n:
                        break
                    if n != SIZE:
                        whole = False  # a torn append: the rest of the record never arrived
                        break
                    if struct.unpack_from("<I", buf, _BODY)[0] != crc32(memoryview(buf)[:_BODY]):
                        self.bad_records += 1
                        continue  # one damaged record must not hide the ones after it
                    rec = struct.unpack_from(_REC, buf, 0)
                    if rec[0] >= since_seq:
                        out.append(rec)
        except OSError:
            pass
        return out, whole

    def _repair(self, first_seq):
        # The newest segment ends in a torn record (a power cut mid-append on a filesystem that
        # kept part of it). Cut it off, keeping every whole record as it is, so appends line up.
        name = self._name(first_seq)
        keep = self._size(first_seq) // SIZE
        tmp = name + ".fix"
        with open(name, "rb") as src, open(tmp, "wb") as dst:
            for _ in range(keep):
                src.readinto(self._buf)
                dst.write(self._buf)
        os.rename(tmp, name)
        self._total = sum(self._size(n) // SIZE for n in self.segments)

    def _pack(self, rec):
        struct.pack_into(_REC, self._buf, 0, *rec)
        struct.pack_into("<I", self._buf, _BODY, crc32(memoryview(self._buf)[:_BODY]))

    def append(self, start_s, duration_s, flags, energy_mwh, received_mwh, register_mwh,
               register_received_mwh, frontend_mwh, frontend_received_mwh):
        seq = self.last[0] + 1 if self.last else 1
        rec = (seq, start_s, duration_s, flags, energy_mwh, received_mwh, register_mwh,
               register_received_mwh, frontend_mwh, frontend_received_mwh)
        self._pack(rec)
        segs = self.segments
        if not segs or self._count >= self._per:
            segs.append(seq)
            self._count = 0
            self._keep_quota()  # before the write: what fails after it would count it twice
        with open(self._name(segs[-1]), "ab") as f:
            f.write(self._buf)
        self.last = rec
        self._count += 1
        self._total += 1
        return rec

    def _keep_quota(self):
        """Room for one more record: the oldest segments go while the quota is full."""
        dropped = 0
        segs = self.segments
        while len(segs) > 1 and self._total >= self._quota:
            n = self._size(segs[0]) // SIZE
            os.remove(self._name(segs.pop(0)))
            self._total -= n
            dropped += n
        if dropped and self._events:
            self._events.log(event_codes.INTERVALS_DROPPED, dropped)

    @property
    def quota_records(self):
        return self._quota
