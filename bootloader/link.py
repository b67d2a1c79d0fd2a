# The link server: frames in, one handler per command code, a reply out for every request.
# Part of the bootloader so the recovery console serves the same protocol as the application.
import asyncio
import gc
import json
from binascii import crc32
from bootloader import framing
from bootloader.auth import Sessions
from bootloader.protocol import ATTEST, AUTH_CHALLENGE, UPD_BLOCK, CommandError

_RX = 512
# Replies to privileged commands are sealed (auth.py), all but a transfer block's: its reply only
# steers the flow, is on every window's critical path, and the verify's sealed verdict covers
# the data.
_UNSEALED = (UPD_BLOCK,)


class LinkServer:
    def __init__(self, board, handlers=None):
        self._board = board
        self._handlers = {}  # code -> async fn(payload), or (async fn(arg, payload), arg); -> dict or bytes
        self._privileged = set()
        self.sessions = Sessions()
        self._handlers[AUTH_CHALLENGE] = self.sessions.challenge
        self.add({ATTEST: self._attest}, privileged=True)
        if handlers:
            self.add(handlers)
        self._decoder = framing.Decoder()
        # (request key, (reply, tag)): the same request sent again (its reply was lost) gets the
        # same reply without running twice. The key is the whole request (type, seq and the
        # body's CRC-32): a new request that reuses a seq runs.
        self._last = None
        self.requests = 0
        self.faults = 0  # requests that met a defect of ours (an "internal" error reply)

    async def run(self):
        reader = asyncio.StreamReader(self._board.link_in)
        buf = bytearray(_RX)
        d = self._decoder
        while True:
            n = await reader.readinto(buf)
            if not n:
                await asyncio.sleep_ms(5)
                continue
            dropped = d.bad_crc + d.oversized + d.runt
            d.feed(buf, n)
            while True:
                frame = d.next()
                if frame is None:
                    break
                await self._serve(*frame)
            if d.bad_crc + d.oversized + d.runt != dropped:
                self._error(0, "bad_frame", "frame dropped: CRC, size or length wrong")

    def send_alarm(self, seq, payload):
        """An unsolicited frame; the host acknowledges it with a command of its own."""
        framing.write(self._board.link_out, framing.ALARM, seq, payload)

    def add(self, handlers, privileged=False):
        """Register command handlers; privileged ones run only inside an authenticated session.
        A handler is an async fn(payload), or a pair (async fn(arg, payload), arg): one function
        serving many commands, at a tuple each rather than a closure each."""
        self._handlers.update(handlers)
        if privileged:
            self._privileged.update(handlers)

    async def _attest(self, payload):
        """An open command's reply, sealed: an authenticated read (the verdict of an upgrade)."""
        if not payload or payload[0] in self._privileged or payload[0] not in self._handlers:
            raise CommandError("bad_request", "attest takes an open command")
        return await self._call(self._handlers[payload[0]], bytes(payload[1:]))

    @staticmethod
    async def _call(handler, payload):
        if type(handler) is tuple:
            return await handler[0](handler[1], payload)
        return await handler(payload)

    def _error(self, seq, code, message, sealed_for=None):
        try:
            body = json.dumps({"code": code, "message": message}).encode()
            tag = b"" if sealed_for is None else self.sessions.seal(framing.ERROR, sealed_for, body)
            framing.write(self._board.link_out, framing.ERROR, seq, body, tag)
        except MemoryError:
            pass  # not even room to refuse: the host hears nothing (or a frame cut short) and asks again

    async def _serve(self, ftype, seq, payload):
        key = (ftype, seq, crc32(payload))
        if self._last and self._last[0] == key:
            framing.write(self._board.link_out, ftype | framing.OK_BIT, seq, *self._last[1])
            return
        self.requests += 1
        handler = self._handlers.get(ftype)
        if handler is None:
            self._error(seq, "unknown_command", "unknown command 0x%02x" % ftype)
            return
        # Whatever a peer sends, it gets an answer and the link keeps serving: the link server
        # ending would take the meter's only way in with it (and, on an image in trial, its
        # confirmation). Handlers check what they read before they change anything.
        sealed = None  # the request type, once its session check passed and its reply is sealed
        try:
            if ftype in self._privileged:
                payload = self.sessions.check(ftype, payload)
                if ftype not in _UNSEALED:
                    sealed = ftype
            result = await self._call(handler, payload)
            # Raw bytes as bytes: a buffer (PING echoes the request's own) takes new data, and the
            # reply is kept for a repeat. bytes() of bytes is the same object, not a copy.
            reply = bytes(result) if isinstance(result, (bytes, bytearray, memoryview)) else json.dumps(result).encode()
            tag = b"" if sealed is None else self.sessions.seal(ftype | framing.OK_BIT, ftype, reply)
            self._last = (key, (reply, tag))
            framing.write(self._board.link_out, ftype | framing.OK_BIT, seq, reply, tag)
        except CommandError as e:
            self._error(seq, e.args[0], e.args[1], sealed)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as e:
            self._error(seq, "bad_request", "bad request: %s" % e, sealed)
        except MemoryError:
            # No room for this request just now (the heap is busiest at boot and in a verify):
            # refused like any bad request, nothing changed, and the link stays up.
            gc.collect()
            self._error(seq, "no_memory", "meter busy: no memory for this request now; try again", sealed)
        except Exception as e:  # a defect of ours: counted (status shows it), never the end of the link
            self.faults += 1
            self._error(seq, "internal", "meter fault: %s" % type(e).__name__, sealed)
