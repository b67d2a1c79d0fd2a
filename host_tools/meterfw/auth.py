"""Privileged sessions with a meter (the device side is bootloader/auth.py).

Each meter has its own key, derived from the utility's secret and the meter's serial number,
so the host needs only the key directory; a meter holds only its own key.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

TAG = 16


def meter_key(utility_secret: bytes, serial: str) -> bytes:
    return hmac.new(utility_secret, b"meterfw-meter-key\x00" + serial.encode(), hashlib.sha256).digest()


class AuthSession:
    def __init__(self, key: bytes, nonce: bytes):
        self._key = key
        self._nonce = nonce
        self._counter = 0

    def seal(self, ftype: int, body: bytes) -> bytes:
        """body | counter | tag: proves the key, and the counter stops replays."""
        self._counter += 1
        counter = struct.pack("<I", self._counter)
        tag = hmac.new(self._key, self._nonce + bytes([ftype]) + counter + body, hashlib.sha256).digest()[:TAG]
        return body + counter + tag
