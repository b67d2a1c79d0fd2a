# Link frames, shared by the application's link server and the recovery console.
#
# Decoded frame: type u8 | seq u8 | payload | crc32(type..payload) u32 LE.
# On the wire each frame is SLIP-escaped (RFC 1055) and ended by END. SLIP rather than
# COBS because escaping and unescaping reduce to bytes.replace/find, which run natively:
# a byte-by-byte loop in MicroPython would cost more CPU than the UART gives us time for.
import struct
from binascii import crc32
from micropython import const

END = b"\xc0"
_ESC = b"\xdb"
_ESC_END = b"\xdb\xdc"
_ESC_ESC = b"\xdb\xdd"
_HEAD = const(2)
_CRC = const(4)
MAX_PAYLOAD = const(2560)  # a 2 KiB image block with its header and session trailer fits

# Frame types. A request's type is its command code; the reply is code | OK_BIT, or ERROR.
OK_BIT = const(0x80)
ERROR = const(0xFF)
ALARM = const(0x7E)  # unsolicited, device to host


def write(out, ftype, seq, *parts):
    """One frame to the stream `out`, its payload the parts (bytes, bytearray) in turn, written
    piece by piece: no copy of the frame, which a heap with its room only in pieces could refuse.
    A piece with neither END nor ESC in it (a JSON reply, most of all) goes out as it is."""
    head = bytes((ftype, seq & 0xFF))
    crc = crc32(head)
    for p in parts:
        crc = crc32(p, crc)
    out.write(END)
    for p in (head,) + parts + (struct.pack("<I", crc),):
        # Escape ESC first so the escapes added for END are not escaped again.
        out.write(p.replace(_ESC, _ESC_ESC).replace(END, _ESC_END) if _ESC in p or END in p else p)
    out.write(END)


class Decoder:
    """Turns a byte stream into (type, seq, payload) frames; counts what it had to drop.

    Frames are unescaped as the bytes arrive into one buffer allocated once, the size of the
    largest frame: a 2 KiB block costs no allocation of its size, which a fragmented heap
    could refuse, and leaves no KBs of garbage. Hand in what the line gave with feed(), then
    call next() until it returns None; a payload is a memoryview into the buffer, valid until
    the next call of next().
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self._frame = bytearray(max_payload + _HEAD + _CRC)
        self._mv = memoryview(self._frame)
        self._n = 0  # bytes of the frame being received
        self._esc = False  # the last byte fed was ESC: the next one says which byte it stands for
        self._bad = False  # this frame is dropped: too long, or a bad escape
        self._src = b""
        self._pos = self._end = 0
        self.bad_crc = 0
        self.oversized = 0
        self.runt = 0

    def feed(self, data, n=None):
        """Bytes from the line (a bytes-like object; its first n bytes if n is given)."""
        self._src = data
        self._pos = 0
        self._end = len(data) if n is None else n

    def next(self):
        """The next whole frame of what was fed, or None when it is used up."""
        src, pos, end = self._src, self._pos, self._end
        view = memoryview(src)
        while pos < end:
            if self._esc:
                self._esc = False
                if src[pos] == 0xC0:
                    # An ESC at the end of the last feed, then END: it escapes nothing, and the
                    # END still ends the frame, as it does when both come in one feed.
                    self._damaged()
                    continue
                self._unescape(src[pos])
                pos += 1
                continue
            stop = src.find(END, pos, end)
            last = end if stop < 0 else stop
            while pos < last:
                k = src.find(_ESC, pos, last)
                cut = last if k < 0 else k
                if cut > pos:
                    self._put(view[pos:cut])
                if k < 0:
                    pos = last
                elif k + 1 < last:
                    self._unescape(src[k + 1])
                    pos = k + 2
                elif stop < 0:
                    self._esc = True  # the escaped byte comes with the next feed
                    pos = last
                else:
                    self._damaged()  # an ESC just before END escapes nothing
                    pos = last
            if stop < 0:
                break
            pos = stop + 1
            frame = self._finish()
            if frame:
                self._pos = pos
                return frame
        self._pos = end
        return None

    def _put(self, part):
        n = self._n + len(part)
        if n > len(self._frame):
            if not self._bad:
                self.oversized += 1
            self._bad = True
        elif not self._bad:
            self._frame[self._n:n] = part
            self._n = n

    def _unescape(self, b):
        if b != 0xDC and b != 0xDD:
            self._damaged()  # not a SLIP escape
        elif self._n == len(self._frame):
            self._put(END)  # one byte too many: counted as oversized there
        elif not self._bad:
            self._frame[self._n] = 0xC0 if b == 0xDC else 0xDB
            self._n += 1

    def _damaged(self):
        if not self._bad:
            self.bad_crc += 1
        self._bad = True

    def _finish(self):
        n, bad = self._n, self._bad
        self._n = 0
        self._bad = self._esc = False
        if bad or n == 0:
            return None  # counted when found; back-to-back END bytes delimit nothing
        if n < _HEAD + _CRC:
            self.runt += 1
            return None
        f = self._mv
        (crc,) = struct.unpack_from("<I", f, n - _CRC)
        if crc != crc32(f[:n - _CRC]):
            self.bad_crc += 1
            return None
        return self._frame[0], self._frame[1], f[_HEAD:n - _CRC]
