"""Talking to one meter: typed calls over a Link."""
from __future__ import annotations

import json
import struct
import time

from . import protocol as P
from .auth import AuthSession, meter_key
from .errors import CommandError, TransportError
from .transport import Link

_REAUTH = {"auth_required", "replay"}  # the meter rebooted or another client took the session


class Meter:
    def __init__(self, link: Link, utility_secret: bytes | None = None):
        self.link = link
        self._secret = utility_secret
        self._auth: AuthSession | None = None

    def _authenticate(self) -> AuthSession:
        if self._secret is None:
            raise CommandError("this is a privileged command: give --keys KEYDIR with the utility secret")
        serial = self.status()["serial"]
        nonce = bytes.fromhex(self.link.request_json(P.AUTH_CHALLENGE)["nonce"])
        self._auth = AuthSession(meter_key(self._secret, serial), nonce)
        return self._auth

    def privileged(self, cmd: int, body: bytes = b"", **kw) -> dict:
        """A privileged request inside an authenticated session, opened (again) when needed."""
        for attempt in (1, 2):
            auth = self._auth or self._authenticate()
            try:
                return self.link.request_json(cmd, raw=auth.seal(cmd, body), **kw)
            except CommandError as e:
                if e.code not in _REAUTH or attempt == 2:
                    raise
                self._auth = None
        raise AssertionError("unreachable")

    def status(self, **kw) -> dict:
        return self.link.request_json(P.STATUS, **kw)

    def read_intervals(self, since_seq: int = 0) -> list[dict]:
        """Every interval record from since_seq on, read page by page."""
        out: list[dict] = []
        while True:
            page = self.link.request_json(P.READ_INTERVALS, {"since_seq": since_seq, "limit": 100})["records"]
            out += page
            if len(page) < 100:
                return out
            since_seq = page[-1]["seq"] + 1

    def read_events(self, since_seq: int = 0) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self.link.request_json(P.READ_EVENTS, {"since_seq": since_seq, "limit": 50})["events"]
            out += page
            if len(page) < 50:
                return out
            since_seq = page[-1]["seq"] + 1

    def update_state(self) -> dict:
        return self.link.request_json(P.UPD_STATE)

    def initiate(self, head: bytes) -> dict:
        return self.privileged(P.UPD_INITIATE, head)

    def block(self, n: int, data: bytes) -> dict:
        return self.privileged(P.UPD_BLOCK, struct.pack("<I", n) + data)

    def verify(self) -> dict:
        return self.privileged(P.UPD_VERIFY, timeout_s=30)

    def activate(self, when: str = "boundary") -> dict:
        return self.privileged(P.UPD_ACTIVATE, json.dumps({"when": when}).encode())

    def revert(self) -> dict:
        return self.privileged(P.REVERT)

    def wait_until(self, predicate, timeout_s: float, poll_s: float = 0.5) -> dict | None:
        """Poll status through resets until predicate(status) holds; None on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                st = self.status(timeout_s=1.0, retries=0)
                if predicate(st):
                    return st
            except TransportError:
                try:
                    self.link.reopen()
                except TransportError:
                    pass
            time.sleep(poll_s)
        return None
