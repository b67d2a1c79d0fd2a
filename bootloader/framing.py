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


def encode(ftype, seq, payload=b""):
    body = bytearray(_HEAD + len(payload) + _CRC)
    body[0] = ftype
    body[1] = seq & 0xFF
    body[_HEAD:_HEAD + len(payload)] = payload
    struct.pack_into("<I", body, _HEAD + len(payload), crc32(memoryview(body)[:_HEAD + len(payload)]))
    # Escape ESC first so the escapes added for END are not escaped again.
    return END + bytes(body).replace(_ESC, _ESC_ESC).replace(END, _ESC_END) + END


class Decoder:
    """Turns a byte stream into (type, seq, payload) frames; counts what it had to drop."""

    def __init__(self, max_payload=MAX_PAYLOAD):
        self._buf = bytearray()
        # An escaped frame can be at most twice its size; anything longer is garbage.
        self._max_wire = 2 * (max_payload + _HEAD + _CRC) + 2
        self.bad_crc = 0
        self.oversized = 0
        self.runt = 0

    def feed(self, data):
        self._buf.extend(data)
        frames = []
        while True:
            end = self._buf.find(END)
            if end < 0:
                if len(self._buf) > self._max_wire:
                    self.oversized += 1
                    self._buf = bytearray()
                break
            raw = bytes(self._buf[:end])
            self._buf = self._buf[end + 1:]
            if not raw:
                continue  # back-to-back END bytes delimit nothing
            if len(raw) > self._max_wire:
                self.oversized += 1
                continue
            frame = raw.replace(_ESC_END, END).replace(_ESC_ESC, _ESC)
            if len(frame) < _HEAD + _CRC:
                self.runt += 1
                continue
            (crc,) = struct.unpack_from("<I", frame, len(frame) - _CRC)
            if crc != crc32(memoryview(frame)[:len(frame) - _CRC]):
                self.bad_crc += 1
                continue
            frames.append((frame[0], frame[1], frame[_HEAD:len(frame) - _CRC]))
        return frames
