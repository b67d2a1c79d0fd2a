"""Privileged sessions with a meter (the device side is bootloader/auth.py).

Each meter has its own key, derived from the utility's secret and the meter's serial number,
so the host needs only the key directory; a meter holds only its own key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import struct

from . import framing
from .errors import TransportError

TAG = 16
TRAILER = 4 + TAG
# Errors the meter gives before a request passes its session check, so unsealed: none of them is
# a verdict, each only makes the host authenticate again, wait, or stop. unknown_command is one: a
# meter that has no such command (its recovery console has no upgrade notice) cannot tell that
# the request was a privileged one.
SESSION_ERRORS = frozenset({"auth_required", "auth_failed", "replay", "auth_unavailable", "no_memory",
                            "unknown_command"})


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

    def open_reply(self, request: bytes, request_type: int, reply_type: int, reply: bytes) -> bytes:
        """The body of the meter's sealed reply to `request` (as seal() made it); TransportError
        when its tag does not prove the meter's key, this session and this request."""
        counter = request[-TRAILER:-TAG]
        body, tag = reply[:-TAG], reply[-TAG:]
        want = hmac.new(self._key, self._nonce + bytes([reply_type, request_type]) + counter + body,
                        hashlib.sha256).digest()[:TAG]
        if len(reply) < TAG or not hmac.compare_digest(tag, want):
            raise TransportError("the meter's reply failed authentication: something on the link altered it")
        return body

    def opener(self, request_type: int, request: bytes):
        """open_reply for the reply to `request`, as transport.Link.request takes it. An error
        the meter gives before a request passes its session check comes unsealed: only those
        pass unsealed."""
        def open_reply(reply_type: int, payload: bytes) -> bytes:
            try:
                return self.open_reply(request, request_type, reply_type, payload)
            except TransportError:
                if reply_type == framing.ERROR and _error_code(payload) in SESSION_ERRORS:
                    return payload
                raise
        return open_reply


def _error_code(payload: bytes) -> str | None:
    try:
        return json.loads(payload).get("code")
    except (ValueError, AttributeError, RecursionError):
        return None
