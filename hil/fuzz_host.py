"""The host targets of `make fuzz`, run by hil/fuzz.py as a worker process like a device target:

    python -m hil.fuzz_host TARGET INPUTS SEED OUTDIR START IMAGE KEYDIR

- host_image: meterfw.image parse_image and inspect (with and without keys) on mutated signed
  images; documented error ImageError.
- host_reply: what the host makes of a meter's replies: framing.Decoder, Link.request,
  request_json and collect over a scripted serial port, session.block_reply and
  Meter.pushed_alarms; documented errors TransportError and CommandError (MeterfwError),
  none at all from pushed_alarms.
"""
from __future__ import annotations

import binascii
import hashlib
import struct
import sys
import time
import traceback
from pathlib import Path

from meterfw import framing
from meterfw import protocol as P
from meterfw import transport
from meterfw.errors import MeterfwError
from meterfw.image import ImageError, inspect, parse_image
from meterfw.keys import load_keys
from meterfw.session import Meter, block_reply

from hil.fuzz_gen import Wrong, json_body, mutate_bytes, mutate_image, run_cases


class HostImage:
    def __init__(self, image_path: str, keydir: str):
        self.base = Path(image_path).read_bytes()
        self.keys = load_keys(Path(keydir), private=False)
        self.clean = False

    def make(self, r) -> bytes:
        self.clean = r.one_in(64)
        return self.base if self.clean else mutate_image(r, self.base, hashlib, binascii.hexlify)

    def run(self, r, data: bytes) -> None:
        try:
            info = inspect(parse_image(data), self.keys if self.clean or r.one_in(4) else None)
        except ImageError:
            if self.clean:
                raise Wrong("the good image was refused") from None
            return
        if self.clean and info["problems"]:
            raise Wrong(f"the good image has problems: {info['problems']}")


class _Serial:
    """A port that hands over the scripted reply chunks, one a read, then nothing."""

    def __init__(self, chunks: list):
        self.chunks = chunks

    @property
    def in_waiting(self) -> int:
        return len(self.chunks[0]) if self.chunks else 0

    def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


class _Clock:
    """The transport's clock: every look moves it on a quarter second and sleeping takes none,
    so a reply that never comes costs a few loop turns, not the timeout."""

    def __init__(self):
        self.t = 0.0

    def monotonic(self) -> float:
        self.t += 0.25
        return self.t

    def sleep(self, s: float) -> None:
        pass


_BODIES = {
    P.STATUS: {"mode": "app", "board": "sim", "active_slot": "a", "security_floor": 1, "slots": {"a": {}},
               "update": {"status": "idle"}, "link_faults": 0},
    P.UPD_STATE: {"status": "initiated", "image_id": "ab" * 32, "next_block": 3, "window": 2, "block_size": 2048},
    P.AUTH_CHALLENGE: {"nonce": "0f" * 16},
    P.READ_EVENTS: {"fields": ["seq", "time", "code", "value"], "rows": [[1, 2, 17, 0]], "names": {"17": "x"},
                    "more": False},
}


class HostReply:
    def __init__(self, image_path: str, keydir: str):
        transport.time = _Clock()  # this worker process only
        self.cmd = self.seq0 = self.mode = 0
        self.chunks: list = []

    def _reply_body(self, r) -> bytes:
        if self.cmd == P.UPD_BLOCK:
            body = struct.pack("<IHB", r.below(100), r.below(8), r.below(2))
            return mutate_bytes(r, body) if r.one_in(4) else body
        return json_body(r, _BODIES[self.cmd])

    def make(self, r) -> bytes:
        self.cmd = r.pick((P.STATUS, P.UPD_STATE, P.AUTH_CHALLENGE, P.READ_EVENTS, P.UPD_BLOCK))
        self.seq0 = r.below(256)
        self.mode = r.below(3)
        seq = (self.seq0 + 1) & 0xFF
        parts = []
        for _ in range(1 + r.below(4)):
            k = r.below(8)
            if k <= 2:
                parts.append(framing.encode(self.cmd | framing.OK_BIT, seq if r.below(4) else r.below(256),
                                            self._reply_body(r)))
            elif k == 3:
                code = r.pick(("bad_request", "bad_frame", "no_memory", "auth_required"))
                parts.append(framing.encode(framing.ERROR, seq if r.below(3) else 0,
                                            json_body(r, {"code": code, "message": "refused"})))
            elif k == 4:
                parts.append(framing.encode(framing.ALARM, r.below(256), json_body(r, {"seq": r.below(9), "code": 17})))
            elif k == 5:
                parts.append(bytes(r.bytes(1 + r.below(40), b"\xc0\xdb")))
            elif k == 6:
                parts.append(b"\xc0" + b"y" * r.pick((2566, 5200, 6000)))
            else:
                parts.append(framing.encode(r.below(256), r.below(256), bytes(r.bytes(r.below(64)))))
        stream = b"".join(parts)
        if r.below(3):
            stream = mutate_bytes(r, stream)
        self.chunks, pos = [], 0
        while pos < len(stream):
            k = r.pick((1, 7, 64, 512, 4096))
            self.chunks.append(stream[pos:pos + k])
            pos += k
        return stream

    def run(self, r, data: bytes) -> None:
        link = transport.Link.__new__(transport.Link)  # no port to open: the serial is scripted
        link.url, link.baud, link.timeout_s = "fuzz", 115200, 1.0
        link._seq, link._decoder, link._ser, link.alarms = self.seq0, framing.Decoder(), _Serial(self.chunks), []
        try:
            if self.mode == 0 and self.cmd != P.UPD_BLOCK:
                link.request_json(self.cmd, retries=r.below(3))
            elif self.mode <= 1:
                block_reply(link.request(P.UPD_BLOCK, b"", retries=r.below(3)))
            else:
                seqs = [(self.seq0 + 1 + i) & 0xFF for i in range(1 + r.below(4))]
                got, _ = link.collect(self.cmd, seqs, timeout_s=1.0)
                for reply in got.values():
                    if self.cmd == P.UPD_BLOCK and isinstance(reply, bytes):
                        block_reply(reply)
        except MeterfwError:
            pass
        Meter(link).pushed_alarms()  # documented to skip what is not an alarm, never to raise


_OURS = str(Path(__file__).resolve().parents[1])
TARGETS = {"host_image": HostImage, "host_reply": HostReply}


def _where(e: BaseException) -> str:
    """The innermost frame of ours (not the standard library's) that the escape came through."""
    tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(_OURS)] or \
        traceback.extract_tb(e.__traceback__)
    if not tb:
        return "?"
    last = tb[-1]
    return f'File "{last.filename}", line {last.lineno}, in {last.name}'


def _heap() -> int:
    """Memory blocks CPython holds (after a collection): a leak shows as blocks that stay."""
    import gc

    gc.collect()
    return sys.getallocatedblocks()


def main(argv: list[str]) -> None:
    name, n, seed, outdir, start, image, keydir = argv
    target = TARGETS[name](image, keydir)
    sys.setrecursionlimit(1000)  # the default, whatever a caller set: escapes show as they would in the CLI
    run_cases(target, name, int(n), int(seed), int(start), outdir, lambda: int(time.monotonic() * 1000),
              lambda a, b: a - b, _heap, _where)


if __name__ == "__main__":
    main(sys.argv[1:])
