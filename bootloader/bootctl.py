# Boot control block: two copies on the filesystem, each with a sequence number and CRC.
# A write always replaces the older copy, so a torn write can only destroy the copy that
# was already superseded; the newest valid copy wins on load.
import struct
from binascii import crc32
from micropython import const

_MAGIC = b"MBC1"
# magic seq active previous trial attempts confirmed reason pending failures nrej floor
_FMT = "<4sIBBBBBBBBBI"
_HEAD = const(21)
_MAX_REJECTED = const(4)
_ID = const(32)
_SIZE = const(_HEAD + _MAX_REJECTED * _ID + 4)
PATHS = ("/boot/bcb0", "/boot/bcb1")
NONE = const(0xFF)

# Boot reasons, stored as their index.
REASONS = ("power-on", "watchdog", "reset", "activate", "revert", "recovery")
ACTIVATE = const(3)
REVERT = const(4)
RECOVERY = const(5)
SLOT_NAMES = ("a", "b")
STAGING = const(2)  # where a bootloader image is downloaded and verified before it is installed


def slot_path(slot):
    return "/boot/bootloader.mfw" if slot == STAGING else "/slots/%s.mfw" % SLOT_NAMES[slot]


class BootControl:
    def __init__(self):
        self.seq = 0
        self.active = 0
        self.previous = NONE
        self.trial = NONE
        self.attempts_left = 0
        self.confirmed = True
        self.reason = 0
        self.pending = NONE  # reason for the reset we asked for; consumed by the next boot
        self.failures = 0    # boots in a row that did not reach a healthy application
        self.rejected = []   # image ids (sha256 of the manifest), oldest first
        self.floor = 0       # security-version floor
        self.copy = -1       # which copy this was loaded from; -1 if none was valid

    def pack(self):
        buf = bytearray(_SIZE)
        struct.pack_into(_FMT, buf, 0, _MAGIC, self.seq, self.active, self.previous,
                         self.trial, self.attempts_left, 1 if self.confirmed else 0,
                         self.reason, self.pending, self.failures, len(self.rejected), self.floor)
        for i, img_id in enumerate(self.rejected):
            buf[_HEAD + i * _ID:_HEAD + (i + 1) * _ID] = img_id
        struct.pack_into("<I", buf, _SIZE - 4, crc32(memoryview(buf)[:_SIZE - 4]))
        return buf

    @classmethod
    def unpack(cls, buf):
        if len(buf) != _SIZE or struct.unpack_from("<I", buf, _SIZE - 4)[0] != crc32(memoryview(buf)[:_SIZE - 4]):
            return None
        f = struct.unpack_from(_FMT, buf, 0)
        if f[0] != _MAGIC or f[10] > _MAX_REJECTED:
            return None
        b = cls()
        (_, b.seq, b.active, b.previous, b.trial, b.attempts_left, confirmed,
         b.reason, b.pending, b.failures, nrej, b.floor) = f
        b.confirmed = bool(confirmed)
        b.rejected = [bytes(buf[_HEAD + i * _ID:_HEAD + (i + 1) * _ID]) for i in range(nrej)]
        return b

    @classmethod
    def load(cls):
        best = None
        for i, path in enumerate(PATHS):
            try:
                with open(path, "rb") as f:
                    b = cls.unpack(f.read())
            except OSError:
                b = None
            if b is not None and (best is None or b.seq > best.seq):
                b.copy = i
                best = b
        return best

    def save(self):
        self.seq += 1
        target = 1 - self.copy if self.copy >= 0 else 0
        with open(PATHS[target], "wb") as f:
            f.write(self.pack())
        self.copy = target

    def back(self):
        """The previous image runs next, confirmed; the one that ran becomes the previous."""
        self.active, self.previous = self.previous, self.active
        self.trial = NONE
        self.confirmed = True
        self.failures = 0

    def reject(self, img_id):
        if img_id not in self.rejected:
            self.rejected.append(img_id)
            del self.rejected[:-_MAX_REJECTED]
