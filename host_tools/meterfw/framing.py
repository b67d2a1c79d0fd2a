"""Host side of the link framing (the device side is bootloader/framing.py).

Decoded frame: type u8 | seq u8 | payload | CRC-32 (type..payload) u32 LE, SLIP-escaped on
the wire and ended by 0xC0. tests/vectors/frames.json pins the bytes both sides must agree on.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import crcmod.predefined

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD
OK_BIT = 0x80
ERROR = 0xFF
ALARM = 0x7E
MAX_PAYLOAD = 2560  # bootloader/framing.py: a 2 KiB image block, its header and session trailer

_crc32 = crcmod.predefined.mkPredefinedCrcFun("crc-32")


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def encode(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    body = bytes([ftype, seq & 0xFF]) + payload
    body += struct.pack("<I", _crc32(body))
    out = bytearray([END])
    for b in body:
        if b == END:
            out += bytes([ESC, ESC_END])
        elif b == ESC:
            out += bytes([ESC, ESC_ESC])
        else:
            out.append(b)
    out.append(END)
    return bytes(out)


class Decoder:
    """Byte stream in, frames out. Garbage between frames is counted and skipped."""

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self._buf = bytearray()
        self._max_wire = 2 * (max_payload + 6) + 2
        self.dropped = 0

    def feed(self, data: bytes) -> list[Frame]:
        frames = []
        self._buf += data
        while (end := self._buf.find(END)) >= 0:
            raw, self._buf = bytes(self._buf[:end]), self._buf[end + 1:]
            if raw:
                frame = self._unescape(raw)
                if frame is None:
                    self.dropped += 1
                else:
                    frames.append(frame)
        if len(self._buf) > self._max_wire:
            self._buf.clear()
            self.dropped += 1
        return frames

    def _unescape(self, raw: bytes) -> Frame | None:
        body = bytearray()
        it = iter(raw)
        for b in it:
            if b == ESC:
                nxt = next(it, None)
                if nxt == ESC_END:
                    body.append(END)
                elif nxt == ESC_ESC:
                    body.append(ESC)
                else:
                    return None
            else:
                body.append(b)
        if len(body) < 6 or len(body) > self._max_wire:
            return None
        (crc,) = struct.unpack_from("<I", body, len(body) - 4)
        if crc != _crc32(bytes(body[:-4])):
            return None
        return Frame(body[0], body[1], bytes(body[2:-4]))
