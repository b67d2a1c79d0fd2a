# Event log (FR14): timestamped, sequence-numbered records appended to two files in turn,
# so the log stays bounded and one file is always whole. The platform's codes are here (DLMS
# codes where one exists, ours from 100); the application logs codes of its own through the same
# log (firmware/event_codes.py). Reading it out for the link, and the names of its codes, are
# event_names.py's, loaded for a read.
import struct
from binascii import crc32
from micropython import const
from bootloader import call

_REC = "<IIHHi"  # seq time_s code reserved value, then crc32
_REC_SIZE = const(16)
_SIZE = const(20)
_PER_FILE = const(200)
_PATHS = ("/data/events0", "/data/events1")

FW_READY = const(17)       # image verified, ready for activation (DLMS)
FW_ACTIVATED = const(18)   # DLMS
FW_VERIFY_FAILED = const(51)  # DLMS
BOOT = const(100)          # value: reason index
TRIAL_ATTEMPT = const(101)  # value: attempts left after this one
CONFIRMED = const(102)     # value: security version
REVERTED = const(103)      # value: slot reverted to
APP_CRASH = const(104)
DOWNLOAD_STARTED = const(105)  # value: image size
DOWNLOAD_DONE = const(106)     # value: image size
BCB_RECOVERED = const(107)
RECOVERY = const(109)      # value: active slot
UNREJECTED = const(110)
REVERT_TARGET_DROPPED = const(112)  # value: its security version, below the floor just raised
BOOTLOADER_TRIAL = const(113)  # value: the bootloader copy now on trial
BOOTLOADER_CONFIRMED = const(114)  # value: its security version
BOOTLOADER_FELL_BACK = const(115)  # value: the bootloader copy running again


def names(codes, default="event"):
    """{code: name} of the platform's codes among `codes`."""
    return call("event_names", "names", codes, default)


def _read(path):
    recs = []
    try:
        with open(path, "rb") as f:
            buf = bytearray(_SIZE)
            while f.readinto(buf) == _SIZE:
                if struct.unpack_from("<I", buf, _REC_SIZE)[0] != crc32(memoryview(buf)[:_REC_SIZE]):
                    break  # a torn append ends the file
                recs.append(struct.unpack_from(_REC, buf, 0))
    except OSError:
        pass
    return recs


class EventLog:
    def __init__(self, clock):
        self._clock = clock
        a, b = _read(_PATHS[0]), _read(_PATHS[1])
        # The file appended to (the other holds the older records until this one is full).
        self.cur = 0 if (a[-1][0] if a else -1) >= (b[-1][0] if b else -1) else 1
        last = (a, b)[self.cur]
        self._count = len(last)
        self.next_seq = last[-1][0] + 1 if last else 1
        self._buf = bytearray(_SIZE)

    def log(self, code, value=0):
        if self._count >= _PER_FILE:
            self.cur ^= 1
            self._count = 0
            open(_PATHS[self.cur], "wb").close()
        struct.pack_into(_REC, self._buf, 0, self.next_seq, self._clock.time_ms() // 1000, code, 0, value)
        struct.pack_into("<I", self._buf, _REC_SIZE, crc32(memoryview(self._buf)[:_REC_SIZE]))
        with open(_PATHS[self.cur], "ab") as f:
            f.write(self._buf)
        self._count += 1
        self.next_seq += 1

    def page(self, request, most, named=None):
        """A page of the log for the link (READ_EVENTS), the names of its codes by `named` (the
        application's) or the platform's; see event_names.page."""
        return call("event_names", "page", self, request, most, named)
