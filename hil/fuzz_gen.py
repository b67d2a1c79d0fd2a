# Input generation for `make fuzz`, in the subset of Python that both MicroPython and CPython run:
# the device harness (hil/fuzz_device.py, under the unix port) and the host targets (hil/fuzz.py)
# mutate the same way. Case i of a run is a pure function of (seed, i): a reproducer is its seed
# and index, and a run killed at case i resumes at i + 1 with the same inputs after it.
import json
import struct

HANG_MS = 1000  # one input that takes longer is a hang
_SAMPLES = 20  # heap samples per run
_KEEP = 3  # reproducers saved per kind of finding

_MASK = 0xFFFFFFFF
# Values at the edges of what the formats store: u8/u16/u32, signed 32 and 64 bits, and past them.
EDGE_INTS = (0, 1, -1, 2, 127, 128, 255, 256, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             0x100000000, -0x80000000, 0x7FFFFFFFFFFFFFFF, -0x8000000000000000, 10 ** 30, -(10 ** 30))
_EDGE_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xDB, 0xDC, 0xDD, 0x2F, 0x2E, 0x22, 0x5C)
_TEXTS = ("", " ", "a", "0", "1.2", "1.2.3", "01.2.3", "1.2.3.4", "-1", "9" * 40, "\u00e9", "\u0663",
          "\U0001F600", "\x00", "\x7f", "a" * 64, "a" * 65, "a" * 300, "/", "..", "../..", "a/../b",
          "abc\ndef", "now", "at", "boundary", "connect", "sim", "pico", "app", "1app", "a-b", "ff" * 32,
          "FF" * 32, "gg" * 32, "true", "null", "{}", "[]")
_FLOATS = (0.5, -0.0, 1e308, -1e308, 1e-300, 3.0, 4294967295.0)


class Rng:
    """xorshift32, seeded per case from (seed, index): the same numbers on both runtimes, and
    every value a small int on a 64-bit MicroPython (no long-int allocation per draw)."""

    def __init__(self, seed, index):
        x = ((seed & _MASK) * 0x9E3779B1 + (index & _MASK) * 0x85EBCA77 + 0x165667B1) & _MASK
        for mul in (0x2C1B3C6D, 0x297A2D39):
            x ^= x >> 15
            x = (x * mul) & _MASK
        x ^= x >> 15
        self.x = x or 0x6D2B79F5

    def u32(self):
        x = self.x
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
        self.x = x
        return x

    def below(self, n):
        return self.u32() % n if n > 0 else 0

    def one_in(self, n):
        return self.below(n) == 0

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, n, special=b""):
        # One in three bytes from `special` when given (the bytes a format treats specially).
        b = bytearray(n)
        for i in range(n):
            x = self.u32()
            b[i] = special[(x >> 8) % len(special)] if special and x % 3 == 0 else x & 0xFF
        return b


def mutate_bytes(r, data, rounds=0):
    """Blind mutations: bit flips, edge bytes and integers, inserts, deletes, truncation,
    duplicated and random ranges."""
    b = bytearray(data)
    for _ in range(rounds or 1 + r.below(4)):
        n = len(b)
        op = r.below(10)
        i = r.below(n + 1)
        if op == 0 and n:
            b[r.below(n)] ^= 1 << r.below(8)
        elif op == 1 and n:
            b[r.below(n)] = r.pick(_EDGE_BYTES)
        elif op == 2:
            b = b[:i] + r.bytes(1 + r.below(8)) + b[i:]
        elif op == 3 and n:
            b = b[:i] + b[i + 1 + r.below(16):]
        elif op == 4:
            b = b[:i]
        elif op == 5 and n:
            j = r.below(n)
            b = b[:i] + b[j:j + 1 + r.below(64)] + b[i:]
        elif op == 6 and n >= 4:
            v = r.pick(EDGE_INTS) & _MASK if r.below(2) else r.below(n + 2)
            j = r.below(n - 3)
            b[j:j + 4] = struct.pack("<I", v)
        elif op == 7 and n >= 2:
            j = r.below(n - 1)
            b[j:j + 2] = struct.pack("<H", r.pick(EDGE_INTS) & 0xFFFF)
        elif op == 8:
            b = b + r.bytes(1 + r.below(32))
        elif n:
            j = r.below(n)
            b[j:j + 8] = r.bytes(min(8, n - j))
    return bytes(b)


def weird_value(r, depth=0):
    """A JSON value of a random kind: the edges of every type a field could be given."""
    k = r.below(13 if depth < 3 else 9)
    if k == 0:
        return None
    if k == 1:
        return r.below(2) == 0
    if k == 2:
        return r.pick(EDGE_INTS)
    if k == 3:
        return r.u32() - 0x80000000
    if k == 4:
        return r.pick(_FLOATS)
    if k == 5:
        return r.pick(_TEXTS)
    if k == 6:
        return "".join([chr(r.pick((0x20, 0x41, 0x7E, 0xE9, 0x663, 0x2028, 0xFFFD, 0x1F600)) + r.below(8))
                        for _ in range(r.below(12))])
    if k == 7:
        return str(r.u32())
    if k == 8:
        return r.pick(EDGE_INTS) * r.pick((1, 1000, 10 ** 20))
    if k == 9:
        return [weird_value(r, depth + 1) for _ in range(r.below(5))]
    if k == 10:
        return {r.pick(_TEXTS): weird_value(r, depth + 1) for _ in range(r.below(4))}
    if k == 11:
        v = weird_value(r, 3)
        for _ in range(1 + r.below(40)):
            v = [v]
        return v
    return [r.below(1000) for _ in range(r.below(300))]


def near(r, v):
    """A value close to a valid one: the next integer over, a string one character off."""
    if isinstance(v, bool):
        return not v if r.below(2) else int(v)
    if isinstance(v, int):
        return r.pick((v - 1, v + 1, -v, v * 1000, v + 0x100000000, str(v), float(v)))
    if isinstance(v, str):
        return r.pick((v + "x", v[:-1], v.upper(), " " + v, v + ".0", v * 2, v.replace(".", "..")))
    if isinstance(v, list):
        return v + [weird_value(r)] if r.below(2) or not v else v[:-1]
    return weird_value(r)


def mutate_obj(r, obj, rounds=0):
    """Structure-aware changes to a JSON object: a field's value replaced (by a near-valid or
    a wrong-typed one), a field dropped, duplicated under another case, or added; now and
    then the object itself replaced."""
    if r.one_in(40):
        return weird_value(r)
    out = dict(obj)
    for _ in range(rounds or 1 + r.below(3)):
        keys = list(out)
        op = r.below(6)
        if keys and op <= 1:
            k = r.pick(keys)
            out[k] = near(r, out[k]) if op == 0 else weird_value(r)
        elif keys and op == 2:
            del out[r.pick(keys)]
        elif keys and op == 3 and isinstance(out[keys[-1]], dict):
            out[keys[-1]] = mutate_obj(r, out[keys[-1]], 1)
        elif keys and op == 4:
            k = r.pick(keys)
            out[k.upper() if r.below(2) else k + "_"] = out[k]
        else:
            out[r.pick(_TEXTS)] = weird_value(r)
    return out


def mutate_text(r, raw):
    """Mutations of a serialised JSON body that a value change cannot make: truncated,
    nested far past any parser's depth, huge numbers, invalid UTF-8, trailing garbage."""
    op = r.below(8)
    if op == 0:
        return raw[:r.below(len(raw) + 1)]
    if op == 1:
        d = r.pick((64, 200, 1000, 1300))
        return b"[" * d + raw + b"]" * (d if r.below(2) else r.below(d))
    if op == 2:
        d = r.pick((64, 200, 600))
        return b'{"a":' * d + raw + b"}" * d
    if op == 3:
        i = r.below(len(raw) + 1)
        return raw[:i] + r.pick((b"9" * 400, b"1e999999", b"-0", b"NaN", b"Infinity", b"0x10", b"1_000"))\
            + raw[i:]
    if op == 4:
        i = r.below(len(raw) + 1)
        return raw[:i] + r.pick((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\\ud800",
                                 b'\\u0000', b"\\", b'"')) + raw[i:]
    if op == 5:
        return raw + r.pick((b" ", b"x", b"}", b",", b"\x00", b"{}"))
    return mutate_bytes(r, raw)


def json_body(r, template, mutate=True):
    """A request body from a valid template: as it is, with mutated fields, or mutated text."""
    obj = mutate_obj(r, template) if mutate and r.below(4) else template
    raw = json.dumps(obj).encode()
    if mutate and r.one_in(3):
        raw = mutate_text(r, raw)
    return raw


# -- images ----------------------------------------------------------------------------------------
# Layout as host_tools/meterfw/image.py writes it: "MFW1" | manifest_len u16 | sig_count u8 |
# reserved u8 | manifest | sig_count x 73 | payload (u16 count, entries, data).
_SIG_LEN = 73


def split_image(data):
    """(manifest bytes, signature bytes, payload) of a well-formed image."""
    mlen, nsig = struct.unpack_from("<HB", data, 4)
    sig_end = 8 + mlen + nsig * _SIG_LEN
    return data[8:8 + mlen], data[8 + mlen:sig_end], data[sig_end:]


def join_image(manifest, sigs, payload, mlen=None, nsig=None, magic=b"MFW1", reserved=0):
    head = magic + struct.pack("<HBB", (len(manifest) if mlen is None else mlen) & 0xFFFF,
                               (len(sigs) // _SIG_LEN if nsig is None else nsig) & 0xFF, reserved & 0xFF)
    return head + manifest + sigs + payload


def split_table(payload):
    """[(name bytes, offset, length)] and the file data after the table."""
    count = struct.unpack_from("<H", payload, 0)[0]
    pos, entries = 2, []
    for _ in range(count):
        n = payload[pos]
        off, length = struct.unpack_from("<II", payload, pos + 1 + n)
        entries.append((payload[pos + 1:pos + 1 + n], off, length))
        pos += 1 + n + 8
    return entries, payload[pos:]


def join_table(entries, data, count=None):
    out = struct.pack("<H", (len(entries) if count is None else count) & 0xFFFF)
    for name, off, length in entries:
        out += bytes([len(name) & 0xFF]) + name + struct.pack("<II", off & _MASK, length & _MASK)
    return out + data


_NAMES = (b"", b"/", b"..", b"./a", b"a/../../b", b"/abs.mpy", b"a//b", b"\xff\xfe", b"\xc3", b"x" * 255,
          b"app.mpy", b"lib", b"lib/", b"lib/util.mpy/x", "\u00e9.mpy".encode(), b"a\x00b", b"app")


def _mutate_table(r, payload):
    entries, data = split_table(payload)
    size = len(payload)
    count = None
    for _ in range(1 + r.below(3)):
        op = r.below(7)
        i = r.below(len(entries)) if entries else 0
        if op == 0:
            count = r.pick((0, 1, len(entries) + 1, len(entries) - 1, 0xFFFF, 300))
        elif op == 1 and entries:
            e = entries[i]
            entries[i] = (r.pick(_NAMES) if r.below(2) else mutate_bytes(r, e[0]), e[1], e[2])
        elif op == 2 and entries:
            e = entries[i]
            edge = r.pick((0, size, size + 1, size - 1, e[1] + 1, 0xFFFFFFFF, 0x80000000, r.u32()))
            entries[i] = (e[0], edge, e[2]) if r.below(2) else (e[0], e[1], edge)
        elif op == 3 and entries:
            entries.append(entries[i])  # a duplicate name
        elif op == 4 and entries:
            entries[i], entries[-1] = entries[-1], entries[i]
        elif op == 5 and entries:
            del entries[i]
        else:
            entries.insert(i, (r.pick(_NAMES), r.below(size + 2), r.below(64)))
    return join_table(entries, data, count)


def _fit(manifest, payload, hashlib, hexlify):
    # Keep the manifest's size and hash true to a mutated payload, so a slot check gets past
    # them to the file table (the signatures no longer match, which a slot check does not see).
    m = json.loads(manifest)
    m["payload_size"] = len(payload)
    m["payload_sha256"] = hexlify(hashlib.sha256(payload).digest()).decode()
    return json.dumps(m).encode()


def mutate_image(r, base, hashlib, hexlify):
    """A mutated image from a valid signed one: manifest fields, header lengths and counts,
    signature records, file table entries (names, offsets, lengths, counts), then now and then
    blind byte mutations and truncation. `hashlib`/`hexlify` are the runtime's own."""
    manifest, sigs, payload = split_image(base)
    kind = r.below(6)
    mlen = nsig = None
    magic, reserved = b"MFW1", 0
    if kind == 0:
        m = json.loads(manifest)
        raw = json.dumps(mutate_obj(r, m)).encode()
        manifest = mutate_text(r, raw) if r.one_in(4) else raw
    elif kind == 1:
        op = r.below(5)
        if op == 0:
            mlen = r.pick((0, 1, len(manifest) - 1, len(manifest) + 1, 0xFFFF, len(manifest) + _SIG_LEN))
        elif op == 1:
            nsig = r.pick((0, 1, 3, 255, len(sigs) // _SIG_LEN + 1))
        elif op == 2:
            magic = r.pick((b"MFW0", b"mfw1", b"\x00\x00\x00\x00", b"MFW1"))
        elif op == 3:
            reserved = r.pick((1, 0xFF))
        else:
            mlen = r.below(0x10000)
    elif kind == 2:
        sigs = mutate_bytes(r, sigs)
    elif kind == 3:
        payload = _mutate_table(r, payload)
        if r.below(3):
            manifest = _fit(manifest, payload, hashlib, hexlify)
    elif kind == 4:
        payload = mutate_bytes(r, payload)
        if r.below(2):
            manifest = _fit(manifest, payload, hashlib, hexlify)
    data = join_image(manifest, sigs, payload, mlen, nsig, magic, reserved)
    if kind == 5 or r.one_in(8):
        data = mutate_bytes(r, data)
    return data


# -- the case loop ---------------------------------------------------------------------------------
class Wrong(Exception):
    """The documented behaviour was not met, without an exception: an oracle failed."""


def _emit(d):
    print(json.dumps(d))


def run_cases(target, name, n, seed, start, outdir, clock, diff, heap, where):
    """Cases start..start+n-1 of `target` (make(r) -> input bytes, run(r, input)), one JSON line
    per finding and per heap sample on stdout, and the case under way in OUTDIR/NAME.cur.
    clock() in ms, diff(a, b), heap() (after a collection) and where(exception) are the runtime's."""
    cur = open(outdir + "/" + name + ".cur", "wb")
    kinds = {}
    every = max(1, n // _SAMPLES)
    warm = min(200, max(1, n // 10))  # the first inputs load code and fill caches: heap counted after
    samples = []
    _emit({"ready": True, "heap": heap()})
    t_start = clock()
    for i in range(start, start + n):
        # Each case from a collected heap. The harness holds every handler's code at once, which a
        # meter never does (it loads them one request at a time): its garbage left to pile up
        # broke the heap into pieces too small for a 4 KB input (found as a long OUTDIR tipped it).
        heap()
        try:
            r = Rng(seed, i)
            data = target.make(r)
        except MemoryError:  # the harness's own garbage in the way: once more, after a collection
            heap()
            r = Rng(seed, i)
            data = target.make(r)
        cur.seek(0)
        cur.write(struct.pack("<II", i, len(data)))
        cur.write(data)
        cur.flush()
        t0 = clock()
        kind = None
        try:
            target.run(r, data)
        except Wrong as e:
            kind = ("wrong", str(e), "")
        except Exception as e:  # an escape: anything but what the target documents
            kind = ("escape", type(e).__name__, where(e))
        ms = diff(clock(), t0)
        if ms > HANG_MS:
            kind = ("hang", "%d ms" % ms, "")
        if kind:
            seen = kinds.get(kind, 0)
            kinds[kind] = seen + 1
            path = ""
            if seen < _KEEP:
                path = "%s/%s-%s-%d.bin" % (outdir, name, kind[0], i)
                with open(path, "wb") as f:
                    f.write(data)
            _emit({"case": i, "kind": kind[0], "what": kind[1], "where": kind[2], "reproducer": path})
        data = r = None  # no input of this case counts in the heap sample
        k = i - start + 1
        if k == warm or k % every == 0 or k == n:
            samples.append((k, heap()))
            _emit({"progress": i, "done": k, "heap": samples[-1][1], "ms": diff(clock(), t_start)})
    cur.close()
    # The heap's floor at the start and at the end: a sample can catch a finished case's objects
    # still held by a stale pointer on the stack (the GC is conservative), a leak raises the floor.
    base = [h[1] for h in samples if h[0] >= warm]
    _emit({"end": True, "inputs": n, "heap_start": min(base[:5]), "heap_end": min(base[-5:]),
           "heap_max": max(base), "samples": base, "ms": diff(clock(), t_start)})
