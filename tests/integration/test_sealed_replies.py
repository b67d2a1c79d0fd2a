"""Replies and sessions (#11 class 5): replies to privileged commands are sealed by the meter, so
a link that alters them cannot forge a verdict; an open read can be sealed too (ATTEST), which
is how `upgrade` reads its verdict; and a challenge that another client opens in the middle of
an upload costs one re-authentication, not the upload.

The tampering link is a man in the middle on a real pseudo-terminal: host tools open its end
like a serial port, and it passes every frame through, rewriting the meter's replies it is told
to (with a valid CRC, as an attacker on the wire would)."""
import os
import select
import threading

import pytest
import serial

from meterfw import framing
from meterfw import protocol as P
from meterfw.errors import CommandError, TransportError
from meterfw.session import Meter
from meterfw.transport import Link


class Tamperer:
    """A pty between the host and the meter's port; `rewrite(frame)` alters the meter's frames:
    it returns a payload, (frame type, payload), or None to pass the frame as it is."""

    def __init__(self, port: str):
        self._master, slave = os.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave
        self._meter = serial.serial_for_url(port, timeout=0)
        self.rewrite = lambda f: None
        self.rewritten = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = framing.Decoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master, self._meter.fileno()], [], [], 0.05)
            if self._master in ready:
                self._meter.write(os.read(self._master, 4096))
            if self._meter.fileno() in ready:
                for f in decoder.feed(self._meter.read(4096)):
                    new = self.rewrite(f)
                    if new is not None:
                        self.rewritten += 1
                    ftype, payload = new if isinstance(new, tuple) else (f.type, f.payload if new is None else new)
                    os.write(self._master, framing.encode(ftype, f.seq, payload))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._meter.close()
        os.close(self._master)
        os.close(self._slave)


@pytest.fixture
def tampered(board):
    t = Tamperer(board.port)
    from meterfw.keys import load_keys

    meter = Meter(Link(t.port, timeout_s=board.timeout_s), utility_secret=load_keys(board.keys_dir).utility_secret)
    yield t, meter
    meter.link.close()
    t.close()


def _flip(payload: bytes) -> bytes:
    """The body's first byte changed, the seal (its last 16 bytes) left as it was."""
    return bytes([payload[0] ^ 1]) + payload[1:]


def test_a_reply_the_link_altered_is_refused_and_an_untouched_one_accepted(tampered):
    t, meter = tampered
    now = lambda: meter.time_get()["time_ms"]  # noqa: E731
    assert meter.time_set(now())  # through the man in the middle, untouched
    # A privileged reply with one byte changed: its seal no longer holds.
    t.rewrite = lambda f: _flip(f.payload) if f.type == P.TIME_SET | framing.OK_BIT else None
    with pytest.raises(TransportError, match="failed authentication"):
        meter.time_set(now())
    assert t.rewritten == 1
    # A refusal forged in place of the meter's reply (a made-up verdict) is no verdict either.
    forged = b'{"code": "verify_failed", "message": "verification failed: forged"}'
    t.rewrite = lambda f: (framing.ERROR, forged) if f.type == P.TIME_SET | framing.OK_BIT else None
    with pytest.raises(TransportError, match="failed authentication"):
        meter.time_set(now())
    t.rewrite = lambda f: None
    assert meter.time_set(now())


def test_an_attested_read_is_the_meters_own(tampered):
    t, meter = tampered
    st = meter.attested(P.STATUS)
    assert st["serial"] == meter.status()["serial"] and "update" in st
    # Open reads are open: the link can make status say anything ...
    t.rewrite = lambda f: f.payload.replace(b'"trial": false', b'"trial": true ') if f.type == P.STATUS | framing.OK_BIT else None
    assert meter.status()["trial"] is True
    # ... but not the sealed copy of the same read.
    t.rewrite = lambda f: (f.payload.replace(b'"trial": false', b'"trial": true ')
                           if f.type == P.ATTEST | framing.OK_BIT else None)
    with pytest.raises(TransportError, match="failed authentication"):
        meter.attested(P.STATUS)
    with pytest.raises(CommandError) as e:
        meter.attested(P.RELAY)  # privileged commands are not reads
    assert e.value.code == "bad_request"


def test_a_challenge_opened_mid_upload_costs_one_reauthentication(board, images):
    meter = board.meter()
    other = []

    def progress(done: int, total: int) -> None:
        # Another client opens a session while ours is sending: every tag we send is stale now.
        if 0 < done < total and len(other) < 1:
            other.append(meter.link.request_json(P.AUTH_CHALLENGE))

    r = meter.upload(images["v2"].read_bytes(), progress)
    assert other and r["blocks"] > 0
    assert meter.verify()["status"] == P.VERIFIED
    meter.link.close()


def test_a_wrong_key_still_fails_after_one_retry(board):
    meter = board.meter()
    meter._secret = b"\x00" * 32  # not the utility's secret: every tag is wrong
    with pytest.raises(CommandError) as e:
        meter.revert()
    assert e.value.code == "auth_failed"
    meter.link.close()


def test_a_request_the_meter_had_no_room_for_is_sealed_afresh_and_sent_again(tampered, images):
    """A meter without heap for a request just now (at boot it is busiest) refuses it with
    no_memory, having changed nothing: the host seals it again and sends it a little later,
    rather than failing the upgrade."""
    t, meter = tampered
    busy = b'{"code": "no_memory", "message": "meter busy: no memory for this request now; try again"}'
    left = [2]

    def refuse_twice(f):
        if f.type == P.UPD_INITIATE | framing.OK_BIT and left[0]:
            left[0] -= 1
            return framing.ERROR, busy
        return None

    t.rewrite = refuse_twice
    up = meter.upload(images["v2"].read_bytes())
    assert t.rewritten == 2 and up["bytes_sent"] == len(images["v2"].read_bytes())
    assert meter.verify()["status"] == P.VERIFIED
