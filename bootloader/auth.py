# Authenticated sessions for privileged commands: HMAC-SHA256 challenge-response with the
# meter's own key, and a counter in every privileged request so nothing can be replayed.
#
# AUTH_CHALLENGE returns a fresh nonce that opens a session. A privileged request then carries
# body | counter u32 LE | HMAC(key, nonce | type | counter | body)[:16]; counters must rise.
# Its reply (OK or error) carries body | HMAC(key, nonce | reply type | request type | counter |
# body)[:16], so a link that alters replies cannot forge a verdict. A reply's type has the high
# bit set and a request's never does: one tag can never pass for the other.
import hashlib
import os
import struct
from micropython import const
from bootloader.protocol import CommandError

_TAG = const(16)
_TRAILER = const(20)
KEY_PATH = "/keys/meter.key"


class Hmac:
    """HMAC-SHA256 (RFC 2104). MicroPython has no hmac module; the pads are made once per key."""

    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._ipad = bytes(b ^ 0x36 for b in key)
        self._opad = bytes(b ^ 0x5C for b in key)

    def digest(self, *parts):
        inner = hashlib.sha256(self._ipad)
        for p in parts:
            inner.update(p)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()


def _same(a, b):
    # Compare every byte whatever the first difference, so timing reveals nothing.
    diff = len(a) ^ len(b)
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


class Sessions:
    def __init__(self, key_path=KEY_PATH):
        try:
            with open(key_path, "rb") as f:
                self._mac = Hmac(f.read())
        except OSError:
            self._mac = None  # an unprovisioned meter accepts no privileged command at all
        self._nonce = None
        self._counter = 0
        self._counter_raw = b""

    async def challenge(self, _payload):
        self._nonce = os.urandom(16)
        self._counter = 0
        return {"nonce": self._nonce.hex()}

    def check(self, ftype, payload):
        """Returns the request body when the trailer proves the key and is fresh."""
        if self._mac is None:
            raise CommandError("auth_unavailable", "this meter has no key; privileged commands are disabled")
        if self._nonce is None or len(payload) < _TRAILER:
            raise CommandError("auth_required", "privileged command: authenticate first")
        n = len(payload) - _TRAILER
        body = memoryview(payload)[:n]
        counter_raw = payload[n:n + 4]
        (counter,) = struct.unpack("<I", counter_raw)
        tag = self._mac.digest(self._nonce, bytes((ftype,)), counter_raw, body)[:_TAG]
        if not _same(tag, payload[n + 4:]):
            raise CommandError("auth_failed", "authentication failed: wrong key or damaged request")
        if counter <= self._counter:
            raise CommandError("replay", "request counter %d already used" % counter)
        self._counter = counter
        self._counter_raw = counter_raw
        return bytes(body)

    def seal(self, reply_type, request_type, reply):
        """The tag that seals the reply to the request check() just passed: sent after it."""
        return self._mac.digest(self._nonce, bytes((reply_type, request_type)), self._counter_raw, reply)[:_TAG]
