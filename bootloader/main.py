# /main.py: the first stage. It is never updated in the field, so it does as little as it can:
# arm the watchdog, pick one of two bootloader copies (/bl/a, /bl/b) by a record kept twice
# (/boot/blr0, /boot/blr1, each with a sequence number and a CRC: the newest valid one wins, and
# a write replaces the older, so a torn write leaves the last good one), and run it. A copy on
# trial has its boot counted before it runs; when its boots are spent, or it fails to start, the
# other copy runs instead. The bootloader confirms its own trial once an application it booted
# came up healthy (bootloader/platform.py), and installs a new copy through this record.
import sys
from binascii import crc32
from struct import pack, unpack
from board.hal import Board

_FMT = "<4sIBBBI"  # magic seq active trial attempts_left floor, then the CRC-32


class Record:
    seq = active = trial = attempts = floor = 0
    copy = -1  # the file it was read from; -1: neither was valid (copy a, confirmed)

    def save(self):
        self.seq += 1
        self.copy = 1 - self.copy if self.copy >= 0 else 0
        b = pack(_FMT, b"MBR1", self.seq, self.active, self.trial, self.attempts, self.floor)
        with open("/boot/blr%d" % self.copy, "wb") as f:
            f.write(b + pack("<I", crc32(b)))

    def fall_back(self):
        """The copy on trial failed: the other one, which it never touched, runs again."""
        self.active ^= 1
        self.trial = 0
        self.save()


def main():
    board = Board()
    wdt = board.watchdog(board.defaults.get("watchdog_ms", 8000))
    r = Record()
    for i in (0, 1):
        try:
            with open("/boot/blr%d" % i, "rb") as f:
                b = f.read()
            v = unpack(_FMT + "I", b)
        except (OSError, ValueError):
            continue
        if v[0] == b"MBR1" and v[6] == crc32(b[:-4]) and v[1] >= r.seq:
            _, r.seq, r.active, r.trial, r.attempts, r.floor, _ = v
            r.copy = i
    if r.trial:
        if r.attempts:
            r.attempts -= 1
            r.save()
        else:
            r.fall_back()
    sys.path.insert(0, "/bl/" + "ab"[r.active])
    try:
        from bootloader.boot import start
        start(board, wdt, r)
    except Exception as e:
        if not r.trial:
            raise
        sys.print_exception(e, sys.stderr)  # the board's debug console, never the meter's link
        r.fall_back()
        board.reset()


main()
