# The device side of `make fuzz`: one long-lived MicroPython unix-port process per target, which
# makes and mutates its own inputs (hil/fuzz_gen.py) and runs them through the device's code as
# the meter does. hil/fuzz.py starts it, reads its JSON lines and stops it if it hangs.
#
#   MICROPYPATH=LIB micropython -X heapsize=H -m hil.fuzz_device LIB TARGET INPUTS SEED OUTDIR START [IMAGE]
#
# LIB holds bootloader/, the application's modules and this harness (hil/) compiled as
# provisioning compiles them (hil.fuzz.build_lib): compiling source at import would leave the
# heap in shreds (a 5 KB block refused with 90 KB free), which no meter sees.
# Before each case the case's index and bytes go to OUTDIR/TARGET.cur, so a case that never ends
# is still known once the process is killed. An escape (any exception but the documented one) is
# saved to OUTDIR as a reproducer; a wrong result (a valid input refused, a frame lost) likewise.
import sys

sys.path[:] = [sys.argv[1], ".frozen"]

import asyncio
import gc
import hashlib
import io
import json
import struct
import time
from binascii import hexlify
from hil.fuzz_gen import Rng, Wrong, json_body, mutate_bytes, mutate_image, run_cases

class _Parsed(Exception):
    """A handler got past its parsing and reached the meter: the request was taken."""


class Probe:
    # Stands in for the meter behind a handler: any attribute is another probe, and the first
    # call, subscript or length (the handler using the meter) ends the case as "parsed".
    def __getattr__(self, name):
        return Probe()

    def __call__(self, *args, **kw):
        raise _Parsed()

    def __getitem__(self, key):
        raise _Parsed()

    def __len__(self):
        raise _Parsed()


def drive(coro):
    """A handler's coroutine to its end. Under an event loop: the unix port's native asyncio
    dereferences a null task when sleep_ms is awaited outside one (a segfault, not an error)."""
    return asyncio.run(coro)


# -- frame decoder (bootloader/framing.py): bad frames are dropped and counted, never raised -------
class Frames:
    def __init__(self, outdir, arg):
        from bootloader import framing
        self.fr = framing
        self.rx = bytearray(512)  # the link server's receive buffer (bootloader/link.py)
        self.known = (0x01, 0x5A, b"resync")
        self.pool = bytes(Rng(0, 0).bytes(4096))
        self.expected = None

    def _encode(self, ftype, seq, payload):
        out = io.BytesIO()
        self.fr.write(out, ftype, seq, payload)
        return out.getvalue()

    def _payload(self, r):
        # A slice of a random pool with the framing's special bytes dropped in: as varied as
        # drawing every byte, at a tenth of the time.
        n = r.pick((0, 1, 2, 7, 64, 255, 2048 + 24, self.fr.MAX_PAYLOAD, self.fr.MAX_PAYLOAD + 1, r.below(300)))
        off = r.below(len(self.pool) - n)
        p = bytearray(self.pool[off:off + n])
        for _ in range(r.below(2 + n // 16) if n else 0):
            p[r.below(n)] = r.pick(b"\xc0\xdb\xdc\xdd\x00")
        return bytes(p)

    def make(self, r):
        parts, frames = [], []
        for _ in range(1 + r.below(3)):  # a few KB at most: the harness shares the meter's heap
            k = r.below(10)
            if k < 6:
                f = (r.below(256), r.below(256), self._payload(r))
                if len(f[2]) <= self.fr.MAX_PAYLOAD:
                    frames.append(f)
                parts.append(self._encode(*f))
            elif k == 6:
                parts.append(r.bytes(1 + r.below(40)))
            elif k == 7:
                parts.append(b"\xc0" * r.below(4))
            elif k == 8:
                parts.append(b"\xc0" + b"x" * r.pick((2566, 2567, 2600, 3000)))
            else:
                parts.append(r.pick((b"\xdb", b"\xdb\xc0", b"\xdb\xdb", b"\xdb\x00", b"x\xdb")))
        stream = b"".join(parts)
        # Garbage between frames does not cost a frame: every frame starts with END.
        self.expected = frames
        if r.below(3):
            stream = mutate_bytes(r, stream)
            self.expected = None
        return stream

    def _decode(self, r, d, stream, chunked):
        """Every frame `d` finds in `stream`, fed in pieces of random sizes through the receive
        buffer as a UART delivers it (chunked), or in one piece."""
        got, pos = [], 0
        while pos < len(stream):
            if chunked:
                k = min(r.pick((1, 2, 3, 7, 64, 512, 1 + r.below(512))), len(stream) - pos)
                self.rx[:k] = stream[pos:pos + k]
                d.feed(self.rx, k)
            else:
                k = len(stream)
                d.feed(stream)
            pos += k
            while True:
                f = d.next()
                if f is None:
                    break
                got.append((f[0], f[1], bytes(f[2])))
        return got

    def run(self, r, stream):
        expected, self.expected = self.expected, None
        d, whole = self.fr.Decoder(), self.fr.Decoder()
        tail = b"\xc0" + self._encode(*self.known)  # a second END: the stream may end in ESC
        got = self._decode(r, d, stream, True) + self._decode(r, d, tail, True)
        ref = self._decode(r, whole, stream, False) + self._decode(r, whole, tail, False)
        if not got or got[-1] != self.known:
            raise Wrong("a good frame after a bad stream was lost")
        if got != ref:
            raise Wrong("chunked decode differs from one-piece decode")
        for f in got:
            if len(f[2]) > self.fr.MAX_PAYLOAD:
                raise Wrong("payload over MAX_PAYLOAD")
        if expected is not None and got[:-1] != expected:
            raise Wrong("a clean stream lost or changed frames")
        for c in (d.bad_crc, d.oversized, d.runt):
            if c < 0:
                raise Wrong("negative counter")


# -- request parser: raw request payload -> (authenticated) body -> the handler's fields ---------
class _Meter(Probe):
    # A handler's `m` whose meter state is real (set_state edits it) and whose registers are 0.
    def __init__(self, state):
        self.state = state
        self.metering = _Metering()


class _Open(Probe):
    reset_mwh = 0


class _Metering(Probe):
    open = _Open()  # the open interval: its reset bookkeeping

    def registers(self):
        return (0,)


class _Agent(Probe):
    def now_s(self):
        return 0


class Requests:
    def __init__(self, outdir, arg):
        from bootloader.auth import Hmac, Sessions
        from bootloader.eventlog import EventLog
        from bootloader.protocol import CommandError
        import activation
        import cmd_change
        import health
        import interval_reads
        import meter_state
        import state_json
        import update_agent
        key = b"fuzz-meter-key-0123456789abcdef!"
        with open(outdir + "/meter.key", "wb") as f:
            f.write(key)
        self.sessions = Sessions(outdir + "/meter.key")
        self.mac = Hmac(key)
        self.nonce = b"N" * 16
        self.state = meter_state.MeterState(outdir + "/state")
        self.state.save = lambda: None  # the parser is fuzzed, not the flash: every case starts equal
        self.base = (list(self.state.fixed), self.state.body)
        st = state_json.to_dict(self.state)
        for k in ("version", "seq", "hash", "relay"):
            st.pop(k)
        self.state_sections = st
        A = activation
        agent = _Agent()
        # (name, command code, privileged, handler(payload), template(r))
        self.cases = (
            ("activate", 0x13, True, lambda p: A.activate(agent, p),
             lambda r: {"when": r.pick(A.WHEN), "registers": r.pick(A.REGISTERS), "ack": r.pick(A.ACK),
                        "at_s": 1750000000 + r.below(1000)}),
            ("time_set", 0x51, True, lambda p: cmd_change.time_set(Probe(), p),
             lambda r: {"time_ms": 1750000000000 + r.below(10 ** 6)}),
            ("relay", 0x52, True, lambda p: cmd_change.relay(Probe(), p),
             lambda r: {"action": r.pick(("connect", "disconnect"))}),
            ("ack", 0x53, True, lambda p: cmd_change.ack(Probe(), p),
             lambda r: {"seqs": [r.below(100) for _ in range(r.below(5))]}),
            ("set_state", 0x50, True, lambda p: cmd_change.set_state(_Meter(self.state), p), self._state_body),
            ("notice", 0x15, True, lambda p: update_agent.UpdateAgent.notice_received(agent, p),
             lambda r: {"version": "1.%d.0" % r.below(9), "image_id": "ab" * 32, "size": r.below(10 ** 6),
                        "when": "boundary"}),
            ("health", 0x42, False, lambda p: health.request(Probe(), p),
             lambda r: {"host_time_ms": 1750000000000 + r.below(1000)}),
            ("intervals", 0x02, False, lambda p: interval_reads.read_page(Probe(), p),
             lambda r: {"since_seq": r.below(100), "since_s": 0, "limit": 1 + r.below(20)}),
            ("events", 0x03, False, self._events, lambda r: {"since_seq": r.below(100), "limit": 1 + r.below(30)}),
        )
        self._events_log = EventLog(Probe())  # no log files here: every page is empty, after its parsing
        self.CommandError = CommandError
        self.case = None
        self.clean = False

    def _events(self, payload):
        async def page():
            return self._events_log.page(payload, 30)
        return page()

    def _state_body(self, r):
        keys = list(self.state_sections)
        body = {}
        for _ in range(1 + r.below(3)):
            k = r.pick(keys)
            body[k] = self.state_sections[k]
        return body

    def make(self, r):
        self.case = c = r.pick(self.cases)
        template = c[4](r)
        body = json_body(r, template)
        self.clean = body == json.dumps(template).encode()
        if not c[2]:
            return body
        counter = 1 + r.below(1000)
        raw_counter = struct.pack("<I", counter)
        sealed = body + raw_counter + self.mac.digest(self.nonce, bytes((c[1],)), raw_counter, body)[:16]
        if r.one_in(4):
            sealed = r.pick((sealed[:r.below(len(sealed))], mutate_bytes(r, sealed), body))
            self.clean = False
        return sealed

    def run(self, r, data):
        c = self.case
        st = self.state
        st.fixed, st.pricing, st.grid, st.body, st.seq = list(self.base[0]), [], [], self.base[1], 0
        s = self.sessions
        s._nonce, s._counter = self.nonce, 0
        # As the link hands it over: a view into the decoder's frame buffer.
        frame = bytearray(len(data) + 6)
        frame[2:2 + len(data)] = data
        payload = memoryview(frame)[2:2 + len(data)]
        try:
            if c[2]:
                payload = s.check(c[1], payload)
            drive(c[3](payload))
        except _Parsed:
            pass
        except self.CommandError:
            if self.clean:
                raise Wrong("%s refused a valid request" % c[0])


# -- image and slot parsing: header, manifest, admission checks, slot check, the slot's VFS -------
class _Board(Probe):
    name = "sim"


class _Platform:
    # What admission reads of the meter; its signature check (board.defaults) ends the case.
    def __init__(self):
        self.board = _Board()
        self.bcb = self.record = self  # boot control and the first stage's record: floors 0, no trial
        self.floor = self.trial = self.slot = 0
        self.in_trial = False
        self.version = "0.1.0"  # the running bootloader's (the record's)
        self.image_id = b""
        self.rejected = []


class Image:
    def __init__(self, outdir, image_path):
        from bootloader import admission, image, slots
        from bootloader.protocol import CommandError
        self.image, self.slots, self.admission, self.CommandError = image, slots, admission, CommandError
        with open(image_path, "rb") as f:
            self.base = f.read()
        self.path = outdir + "/slot.mfw"
        slots.slot_path = lambda slot: self.path  # the slot file is this run's, not /slots/a.mfw
        self.p = _Platform()
        self.clean = False

    def make(self, r):
        self.clean = r.one_in(64)
        data = self.base if self.clean else mutate_image(r, self.base, hashlib, hexlify)
        with open(self.path, "wb") as f:
            f.write(data)
        return data

    def run(self, r, data):
        image, slots = self.image, self.slots
        m, _ = slots.manifest(0)  # documented: (None, None) for anything not well-formed
        self.p.floor = r.pick((0, 1, 2, 0xFFFFFFFF))
        try:
            drive(slots.check(0, "sim", self.p.floor))
            ok = True
        except ValueError:
            ok = False
        if self.clean and (m is None or not ok and self.p.floor <= 1):
            raise Wrong("the good image did not pass the slot check")
        try:
            _, _, off = image.read_header(io.BytesIO(data))
            head = data[:off]
        except ValueError:
            head = data[:r.below(len(data) + 1)]
        try:
            drive(self.admission.admit(self.p, head))
        except _Parsed:
            pass  # every check before the signatures passed
        except (self.CommandError, ValueError):
            if self.clean and self.p.floor <= 1:
                raise Wrong("the good image was refused before its signatures")
        try:
            vfs = image.ImageVfs(self.path)
        except (OSError, ValueError):
            if self.clean:
                raise Wrong("the good image did not mount")
            return
        try:
            n = self._walk(vfs, "/", r, 0)
            vfs.statvfs("/")
        finally:
            vfs.umount()
        if self.clean and n != 4:
            raise Wrong("the good image lists %d files, not 4" % n)

    def _walk(self, vfs, path, r, depth):
        files = 0
        try:
            names = list(vfs.ilistdir(path))[:32]
            vfs.chdir(path)
            vfs.getcwd()
        except OSError:
            return 0
        for entry in names:
            p = path.rstrip("/") + "/" + entry[0]
            if entry[1] == 0x4000:
                if depth < 4:
                    files += self._walk(vfs, p, r, depth + 1)
                continue
            files += 1
            try:
                vfs.stat(p)
                vfs.stat(entry[0])  # relative to the cwd
                with vfs.open(p, "rb" if r.below(4) else "r") as f:
                    f.read()
            except OSError:
                pass
            except UnicodeError:
                pass  # text read of bytes that are not UTF-8: what any MicroPython file raises
        return files


TARGETS = {"frames": Frames, "requests": Requests, "image": Image}


def _where(e):
    # The innermost frame of the traceback: where an escape came from, to tell kinds apart.
    out = io.StringIO()
    sys.print_exception(e, out)
    lines = [ln.strip() for ln in out.getvalue().split("\n") if ln.strip().startswith("File")]
    return lines[-1] if lines else "?"


def _heap():
    gc.collect()
    return gc.mem_alloc()


def main():
    name, n, seed, outdir, start = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    target = TARGETS[name](outdir, sys.argv[7] if len(sys.argv) > 7 else None)
    clock = lambda: time.ticks_ms()  # noqa: E731
    run_cases(target, name, n, seed, start, outdir, clock, time.ticks_diff, _heap, _where)


if __name__ == "__main__":
    main()
