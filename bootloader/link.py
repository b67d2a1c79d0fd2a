# The link server: frames in, one handler per command code, a reply out for every request.
# Part of the bootloader so the recovery console serves the same protocol as the application.
import asyncio
import gc
import json
from bootloader import framing
from bootloader.auth import Sessions
from bootloader.protocol import AUTH_CHALLENGE, CommandError

_RX = 512


class LinkServer:
    def __init__(self, board, handlers=None):
        self._board = board
        self._handlers = {}  # code -> async fn(payload), or (async fn(arg, payload), arg); -> dict or bytes
        self._privileged = set()
        self.sessions = Sessions()
        self._handlers[AUTH_CHALLENGE] = self.sessions.challenge
        if handlers:
            self.add(handlers)
        self._decoder = framing.Decoder()
        self._last = None  # (type, seq, reply): a retried request gets the same reply
        self.requests = 0

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
        self._board.link_out.write(framing.encode(framing.ALARM, seq, payload))

    def add(self, handlers, privileged=False):
        """Register command handlers; privileged ones run only inside an authenticated session.
        A handler is an async fn(payload), or a pair (async fn(arg, payload), arg): one function
        serving many commands, at a tuple each rather than a closure each."""
        self._handlers.update(handlers)
        if privileged:
            self._privileged.update(handlers)

    def _error(self, seq, code, message):
        self._board.link_out.write(
            framing.encode(framing.ERROR, seq, json.dumps({"code": code, "message": message}).encode()))

    async def _serve(self, ftype, seq, payload):
        if self._last and self._last[0] == ftype and self._last[1] == seq:
            self._board.link_out.write(self._last[2])
            return
        self.requests += 1
        handler = self._handlers.get(ftype)
        if handler is None:
            self._error(seq, "unknown_command", "unknown command 0x%02x" % ftype)
            return
        try:
            if ftype in self._privileged:
                payload = self.sessions.check(ftype, payload)
            if type(handler) is tuple:
                result = await handler[0](handler[1], payload)
            else:
                result = await handler(payload)
        except CommandError as e:
            self._error(seq, e.code, e.message)
            return
        except (ValueError, KeyError, TypeError) as e:
            self._error(seq, "bad_request", "bad request: %s" % e)
            return
        except MemoryError:
            # No room for this request just now (the heap is busiest at boot and in a verify):
            # refused like any bad request, nothing changed, and the link stays up.
            gc.collect()
            self._error(seq, "no_memory", "meter busy: no memory for this request now; try again")
            return
        reply = result if isinstance(result, bytes) else json.dumps(result).encode()
        frame = framing.encode(ftype | framing.OK_BIT, seq, reply)
        self._last = (ftype, seq, frame)
        self._board.link_out.write(frame)
