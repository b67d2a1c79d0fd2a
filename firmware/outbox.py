# The outbox (FR15, FR16, NFR1): failures to report, persisted until the host acknowledges them
# (at-least-once delivery). An alarm reported at once is pushed as an unsolicited ALARM frame,
# again after growing pauses until acknowledged, and at once when a host shows up with a
# request; one that waits for the next scheduled read rides in the reply to that read.
import asyncio
import json
import time
from micropython import const
import event_codes
import store
from event_codes import names

PATH = "/data/outbox"
CAPACITY = const(16)
_FIRST_RETRY_MS = const(1000)
_MAX_RETRY_MS = const(8000)
_POLL_MS = const(250)
_QUIET_MS = const(2000)
_MESSAGE_CHARS = const(60)
# Fields of a pending alarm.
_SEQ = const(0)
_TIME = const(1)
_CODE = const(2)
_VALUE = const(3)
_MESSAGE = const(4)
_NOW = const(5)  # 1: pushed at once; 0: waits for the next scheduled read


class Outbox:
    def __init__(self, clock, events=None, policy=None, path=PATH):
        self._clock = clock
        self._events = events
        self._policy = policy  # fn(code) -> True to push at once
        self.path = path
        self.send = None  # fn(frame_seq, payload): the link server's send_alarm
        self.activity = None  # fn() -> requests served so far: a host is there when it grows
        self.pending = []
        self.next_seq = 1
        self.once = {}  # family (a name's first word) -> what the last alarm posted once of it named (post)
        self.pushes = 0
        body, _ = store.load(path)
        if body:
            try:
                d = json.loads(body)
                # "onces": an older image kept one name, as "once"; the revert it named is behind
                # any update since, so never posted again.
                self.pending, self.next_seq, self.once = d["pending"], d["next"], d.get("onces", {})
            except (ValueError, KeyError, TypeError):
                pass  # store.load checked the CRC: only a future format could land here
        self._wake = asyncio.Event()
        self._wake.set()  # alarms left from before the reset go out at once
        self._retry_ms = _FIRST_RETRY_MS

    def _save(self):
        store.save(self.path, json.dumps({"next": self.next_seq, "pending": self.pending, "onces": self.once}).encode())

    def post(self, code, value=0, message="", now=None, once=None):
        """Queue an alarm; `now` overrides the policy (True: push at once). Returns its seq.
        An alarm that `once` names (a revert's record, "revert SEQ") is queued the first time
        only, None after: the name is stored in the alarm's own write, so no power cut parts the
        two. The last name of each family (its first word: revert, han) is kept."""
        if once is not None:
            family = once.split()[0]
            if self.once.get(family) == once:
                return None
            self.once[family] = once
        if now is None:
            now = self._policy(code) if self._policy else True
        seq = self.next_seq
        self.next_seq += 1
        if len(self.pending) >= CAPACITY:
            dropped = self.pending.pop(0)
            if self._events:
                self._events.log(event_codes.OUTBOX_OVERFLOW, dropped[_SEQ])
        self.pending.append([seq, self._clock.time_ms() // 1000, code, value, message[:_MESSAGE_CHARS], 1 if now else 0])
        self._save()
        if now:
            self._wake.set()
        return seq

    def ack(self, seqs):
        """Acknowledge alarms by seq; returns how many were pending. Unknown seqs are ignored,
        so a repeated acknowledgement is harmless."""
        keep = [a for a in self.pending if a[_SEQ] not in seqs]
        n = len(self.pending) - len(keep)
        if n:
            self.pending = keep
            self._save()
            if self._events:
                self._events.log(event_codes.ALARMS_ACKED, n)
        return n

    @staticmethod
    def as_dict(a, named):
        return {"seq": a[_SEQ], "time": a[_TIME], "code": a[_CODE], "name": named[a[_CODE]],
                "value": a[_VALUE], "message": a[_MESSAGE], "report": "immediate" if a[_NOW] else "next-read"}

    def _names(self):
        return names({a[_CODE] for a in self.pending}, "alarm")

    def listing(self, deferred_only=False):
        named = self._names()
        return [self.as_dict(a, named) for a in self.pending if not (deferred_only and a[_NOW])]

    def _push(self):
        named = self._names()
        for a in self.pending:
            if a[_NOW]:
                self.send(a[_SEQ] & 0xFF, json.dumps(self.as_dict(a, named)).encode())
                self.pushes += 1

    async def run(self):
        last_ms = seen_ms = time.ticks_ms()
        seen = self.activity() if self.activity else 0
        while True:
            now_ms = time.ticks_ms()
            # A request after a quiet spell: a host (back) on the line, so push without waiting.
            host = self.activity() if self.activity else seen
            back = host != seen and time.ticks_diff(now_ms, seen_ms) >= _QUIET_MS
            if host != seen:
                seen, seen_ms = host, now_ms
            fresh = self._wake.is_set()
            self._wake.clear()
            if self.send is not None and any(a[_NOW] for a in self.pending):
                if fresh or back or time.ticks_diff(now_ms, last_ms) >= self._retry_ms:
                    try:
                        self._push()
                    except MemoryError:  # no room just now: pushed again at the next retry
                        pass
                    last_ms = now_ms
                    self._retry_ms = _FIRST_RETRY_MS if fresh or back else min(2 * self._retry_ms, _MAX_RETRY_MS)
            try:
                await asyncio.wait_for_ms(self._wake.wait(), _POLL_MS)
            except asyncio.TimeoutError:
                pass
