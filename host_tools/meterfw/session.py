"""Talking to one meter: typed calls over a Link."""
from __future__ import annotations

import struct
import time

from . import protocol as P
from .errors import TransportError
from .transport import Link


class Meter:
    def __init__(self, link: Link):
        self.link = link

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
        return self.link.request_json(P.UPD_INITIATE, raw=head)

    def block(self, n: int, data: bytes) -> dict:
        return self.link.request_json(P.UPD_BLOCK, raw=struct.pack("<I", n) + data)

    def verify(self) -> dict:
        return self.link.request_json(P.UPD_VERIFY, timeout_s=30)

    def activate(self, when: str = "boundary") -> dict:
        return self.link.request_json(P.UPD_ACTIVATE, {"when": when})

    def revert(self) -> dict:
        return self.link.request_json(P.REVERT)

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
