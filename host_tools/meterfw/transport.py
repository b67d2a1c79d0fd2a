"""The link to a meter: pyserial's serial_for_url (a device path, socket://host:port, ...)
carrying request/response frames. This is the only module that imports pyserial."""
from __future__ import annotations

import json
import random
import time

import serial

from . import framing
from .errors import CommandError, TransportError
from .reply import parse_reply

# A request the meter had no room for is sent again this many times, waiting 0.2, 0.4, ... s
# (15.6 s in all): a simulated meter resuming a transfer after a power cut, on a loaded CI
# machine, refused a block's first request for all of 7.2 s (8 tries) once in three runs.
BUSY = "no_memory"  # the meter's refusal: it changed nothing, and is busiest at boot
BUSY_TRIES = 12
BUSY_WAIT_S = 0.2

DEFAULT_BAUD = 115200
_RETRY_JITTER_S = 0.4


# A meter answers within this; a slower one (a narrowband link, an emulated chip) is given more
# with --timeout, and the waits that span a boot scale with it.
DEFAULT_TIMEOUT_S = 3.0


class Backoff:
    """The waits for a meter that had no room for a request (BUSY): a little longer each time,
    BUSY_TRIES at most. One per request, however it is sent again."""

    def __init__(self):
        self.tries = 0

    def again(self, e: CommandError) -> bool:
        """True, after the wait, when `e` is the meter's BUSY and tries are left."""
        if e.code != BUSY or self.tries >= BUSY_TRIES:
            return False
        self.tries += 1
        time.sleep(BUSY_WAIT_S * self.tries)
        return True


class Link:
    bytes_out = 0  # bytes written to the line, framing included (a Link's own count from its first)

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url = url
        self.baud = baud
        self.timeout_s = timeout_s
        self._seq = random.randrange(256)  # a fresh session never collides with the meter's cached reply
        self._decoder = framing.Decoder()
        self._ser = None
        self.alarms: list[framing.Frame] = []  # unsolicited frames seen while waiting for replies
        self.open()

    def open(self) -> None:
        if self.is_shut:
            raise TransportError(f"the link to {self.url} was shut")
        try:
            self._ser = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0.05)
        except (ValueError, OSError, OverflowError) as e:  # serial.SerialException is an OSError
            raise TransportError(f"cannot open port {self.url}: {_reason(e)}") from None
        self._decoder = framing.Decoder()

    def close(self) -> None:
        if self._ser is not None:
            ser, self._ser = self._ser, None
            try:
                ser.close()
            except OSError:
                pass  # the port has gone already (a USB meter that reset)

    is_shut = False

    def shut(self) -> None:
        """Close for good, from any thread: the flow using the link fails at its next read
        instead of opening it again (a campaign's meter that ran past its timeout)."""
        self.is_shut = True
        self.close()

    def reopen(self) -> None:
        """After the meter reset: a USB port may have vanished and come back."""
        self.close()
        self.open()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _port(self):
        """The open port; one that a failed reopen() left closed is opened again (or raises)."""
        if self._ser is None:
            self.open()
        return self._ser

    def _write(self, data: bytes) -> None:
        try:
            self._port().write(data)
            self.bytes_out += len(data)
        except OSError as e:
            raise TransportError(f"write to {self.url} failed: {_reason(e)}") from None

    def _read(self) -> bytes:
        ser = self._port()
        try:
            data = ser.read(ser.in_waiting or 1)
            # socket:// (pyserial 3.5, pinned) says one byte is waiting whatever has arrived, so a
            # reply would cost a select and a recv per byte; its socket is non-blocking: take the rest.
            sock = getattr(ser, "_socket", None)
            if data and sock is not None:
                try:
                    data += sock.recv(65536)
                except BlockingIOError:
                    pass
            return data
        except OSError as e:
            raise TransportError(f"read from {self.url} failed: {_reason(e)}") from None

    def request(self, cmd: int, payload: bytes = b"", timeout_s: float | None = None,
                retries: int = 2, opener=None) -> bytes:
        """_request(), sent again a little later each time the meter had no room for it just
        now (`no_memory`: refused, nothing changed; it is busiest at boot). A sealed request is
        the session's to seal afresh (session.Meter.privileged)."""
        backoff = Backoff()
        while True:
            try:
                return self._request(cmd, payload, timeout_s, retries, opener)
            except CommandError as e:
                if opener is not None or not backoff.again(e):
                    raise

    def _request(self, cmd: int, payload: bytes, timeout_s: float | None, retries: int, opener) -> bytes:
        """Send one request and return the payload of its reply.

        A lost frame in either direction is repaired by sending the same frame again: the
        meter answers a repeated (command, sequence) with its cached reply, so nothing is
        done twice. An error reply raises CommandError with the meter's code and message.
        `opener(reply type, payload)`, for a sealed reply (auth.py), checks it and returns its
        body; it raises TransportError for a reply the meter did not seal.
        """
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = _encode(cmd, seq, payload)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        for attempt in range(retries + 1):
            if attempt:
                # A frame the meter lost to one of its flash stalls (an interval close, say) is
                # resent a random moment later: a fixed timeout could keep landing on the next.
                time.sleep(random.uniform(0, _RETRY_JITTER_S))
            self._write(frame)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for f in self._decoder.feed(self._read()):
                    if f.type == framing.ALARM:
                        self.alarms.append(f)
                    elif f.type == framing.ERROR:
                        mine = f.seq == seq and opener is not None
                        err = _decode_error(opener(f.type, f.payload) if mine else f.payload)
                        if f.seq == seq and err.code != "bad_frame":
                            raise err
                        if err.code == "bad_frame":
                            deadline = 0  # our frame arrived damaged: resend now
                            break
                    elif f.seq == seq and f.type == cmd | framing.OK_BIT:
                        return f.payload if opener is None else opener(f.type, f.payload)
        raise TransportError(f"no answer from the meter on {self.url} after {retries + 1} tries")

    # -- pipelined requests: several frames in flight, for the flow-controlled transfer ---------
    def send(self, cmd: int, payload: bytes = b"") -> int:
        """Send one request frame without waiting; returns its sequence number."""
        self._seq = (self._seq + 1) & 0xFF
        self._write(_encode(cmd, self._seq, payload))
        return self._seq

    def collect(self, cmd: int, seqs, timeout_s: float, quiet_s: float = 0.5) -> tuple[dict, int]:
        """Replies to the requests `seqs` (sent with send()), in the order they were sent.

        Returns ({seq: reply payload or CommandError}, bad_frames). Stops when every request has
        its reply, when timeout_s passes without one arriving, or, once the meter has reported a
        damaged frame, when quiet_s passes without one: the damaged request gets no reply.
        """
        pending = set(seqs)
        got: dict = {}
        bad = 0
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for f in self._decoder.feed(self._read()):
                if f.type == framing.ALARM:
                    self.alarms.append(f)
                elif f.type == framing.ERROR:
                    err = _decode_error(f.payload)
                    if err.code == "bad_frame":
                        bad += 1
                        deadline = min(deadline, time.monotonic() + quiet_s)
                    elif f.seq in pending:
                        got[f.seq] = err
                        pending.discard(f.seq)
                        deadline = time.monotonic() + (quiet_s if bad else timeout_s)
                elif f.type == cmd | framing.OK_BIT and f.seq in pending:
                    got[f.seq] = f.payload
                    pending.discard(f.seq)
                    deadline = time.monotonic() + (quiet_s if bad else timeout_s)
        return got, bad

    def request_json(self, cmd: int, args: dict | None = None, raw: bytes | None = None, **kw) -> dict:
        """A request whose reply is a JSON object; the request carries args as JSON, or raw bytes.
        The reply is checked against what the host reads of it (reply.py): ReplyError otherwise."""
        payload = raw if raw is not None else json.dumps(args).encode() if args else b""
        return parse_reply(cmd, self.request(cmd, payload, **kw))


def _encode(cmd: int, seq: int, payload: bytes) -> bytes:
    if len(payload) > framing.MAX_PAYLOAD:  # the meter would drop it as a damaged frame, each try
        raise CommandError(f"this request is {len(payload)} bytes; a meter takes at most {framing.MAX_PAYLOAD}")
    return framing.encode(cmd, seq, payload)


def _decode_error(payload: bytes) -> CommandError:
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):
        d = None
    if not isinstance(d, dict) or not isinstance(d.get("message"), str):
        return CommandError(f"meter refused with an unreadable error: {payload[:40]!r}", code="unknown")
    code = d.get("code")
    return CommandError(f"meter refused: {d['message']}", code=code if isinstance(code, str) else "unknown")


def _reason(e: Exception) -> str:
    text = str(e)
    if "No such file or directory" in text or "could not open port" in text and "[Errno 2]" in text:
        return "no such device"
    return text
