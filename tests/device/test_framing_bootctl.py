"""Framing and boot control under MicroPython, against vectors the host produced."""
import hashlib
import json
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterfw import framing

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "frames.json"


def test_host_vectors_are_current():
    for v in json.loads(VECTORS.read_text()):
        assert framing.encode(v["type"], v["seq"], bytes.fromhex(v["payload"])).hex() == v["wire"]


def test_device_encodes_and_decodes_the_host_vectors(run_mpy):
    out = run_mpy("""
import binascii
from bootloader import framing
vs = json.load(open(ARGS[0]))
d = framing.Decoder()
stream = b"".join(binascii.unhexlify(v["wire"]) for v in vs)
got = []
for i in range(0, len(stream), 7):  # arbitrary chunking, as a UART delivers it
    got += frames(d, stream[i:i + 7])
print(json.dumps({
    "encode_ok": [binascii.hexlify(encode(v["type"], v["seq"], binascii.unhexlify(v["payload"]))).decode() == v["wire"] for v in vs],
    "decoded": [[t, s, binascii.hexlify(p).decode()] for t, s, p in got]}))
""", VECTORS)
    vs = json.loads(VECTORS.read_text())
    assert all(out["encode_ok"])
    assert out["decoded"] == [[v["type"], v["seq"], v["payload"]] for v in vs]


def test_device_drops_damaged_frames_and_keeps_the_next(run_mpy):
    good = framing.encode(0x01, 5, b"hello")
    flipped = bytearray(good)
    flipped[3] ^= 0x10
    out = run_mpy("""
import binascii
from bootloader import framing
d = framing.Decoder()
got = frames(d, binascii.unhexlify(ARGS[0]))
got += frames(d, binascii.unhexlify(ARGS[1]))
got += frames(d, b"\\xc0" + b"x" * 9000)    # oversized garbage with no end
got += frames(d, binascii.unhexlify(ARGS[1]))
print(json.dumps({"n": len(got), "payloads": [bytes(p).decode() for _, _, p in got],
                  "bad_crc": d.bad_crc, "oversized": d.oversized}))
""", bytes(flipped).hex() + b"\xc0\x01\xc0".hex(), good.hex())
    assert out["payloads"] == ["hello", "hello"]
    assert out["bad_crc"] == 1 and out["oversized"] == 1


def test_boot_control_newest_valid_copy_wins_and_writes_alternate(run_mpy):
    out = run_mpy("""
import os
os.mkdir("boot")
from bootloader import bootctl
bootctl.PATHS = ("boot/bcb0", "boot/bcb1")
b = bootctl.BootControl()
b.save()                 # seq 1 -> copy 0
b.active = 1
b.save()                 # seq 2 -> copy 1
first = (b.seq, b.copy)
b.reject(b"\\x11" * 32)
b.save()                 # seq 3 -> copy 0 (the older one)
raw = open("boot/bcb0", "rb").read()
open("boot/bcb0", "wb").write(raw[:40])   # a torn write of the newest copy
torn = bootctl.BootControl.load()
open("boot/bcb1", "wb").write(b"\\xff" * len(raw))
none = bootctl.BootControl.load()
print(json.dumps({"first": first, "torn": [torn.seq, torn.active, torn.copy, len(torn.rejected)], "none": none is None}))
""")
    assert out["first"] == [2, 1]
    assert out["torn"] == [2, 1, 1, 0]  # the previous good copy survives
    assert out["none"] is True


def test_device_unescapes_across_every_chunk_boundary_without_copies_of_a_frame(run_mpy, tmp_path):
    # Payloads of nothing but escaped bytes, split at every offset (an ESC last in one read,
    # its partner first in the next), then the largest frame: all decoded, none dropped,
    # and the decoder's one buffer is all it allocates of frame size.
    tricky = bytes([0xC0, 0xDB] * 40) + b"\xdb\xdc\xdd\xc0"
    wire = framing.encode(0x21, 7, tricky) + framing.encode(0x22, 8, b"\xc0" * 2560)
    (tmp_path / "wire.bin").write_bytes(wire)
    out = run_mpy("""
import binascii, gc, hashlib
from bootloader import framing
wire = open(ARGS[0], "rb").read()
results = []
for size in (1, 2, 3, 5, 64, 512, len(wire)):
    d = framing.Decoder()
    got = []
    biggest = 0
    for i in range(0, len(wire), size):
        d.feed(wire[i:i + size])
        while True:
            gc.collect()
            before = gc.mem_free()
            f = d.next()
            biggest = max(biggest, before - gc.mem_free())
            if f is None:
                break
            got.append([f[0], f[1], binascii.hexlify(hashlib.sha256(f[2]).digest()).decode()])
    results.append({"size": size, "got": got, "dropped": d.bad_crc + d.oversized + d.runt, "biggest": biggest})
print(json.dumps(results))
""", tmp_path / "wire.bin")
    want = [[0x21, 7, hashlib.sha256(tricky).hexdigest()], [0x22, 8, hashlib.sha256(b"\xc0" * 2560).hexdigest()]]
    for r in out:
        assert r["got"] == want, r["size"]
        assert r["dropped"] == 0
        assert r["biggest"] < 1024, r  # small views and slices only, never a frame-sized copy


# -- split invariance, as a property ------------------------------------------------------------
# Hypothesis makes the streams (frames full of END and ESC bytes, damaged frames, garbage between
# them) and the reads they arrive in; the device decodes each stream twice, once as it was split
# and once whole, in one MicroPython run. The frames must be the same both ways, and for a clean
# stream exactly the frames sent.
_PAYLOAD = st.binary(max_size=300) | st.lists(st.sampled_from([0xC0, 0xDB, 0xDC, 0xDD, 0x00]),
                                              max_size=80).map(bytes)
_FRAME = st.tuples(st.integers(0, 255), st.integers(0, 255), _PAYLOAD)


@st.composite
def _streams(draw):
    frames = draw(st.lists(_FRAME, min_size=1, max_size=6))
    parts, clean = [], True
    for t, s, p in frames:
        wire = framing.encode(t, s, p)
        damage = draw(st.sampled_from(["none", "none", "none", "flip", "cut", "garbage"]))
        if damage == "flip" and len(wire) > 3:
            i = draw(st.integers(1, len(wire) - 2))
            wire = wire[:i] + bytes([wire[i] ^ draw(st.integers(1, 255))]) + wire[i + 1:]
            clean = False
        elif damage == "cut":
            wire = wire[:draw(st.integers(0, len(wire)))]
            clean = False
        elif damage == "garbage":
            wire = draw(st.binary(max_size=20)) + wire
            clean = False
        parts.append(wire)
    stream = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    return frames, stream, cuts, clean


def test_decoding_is_the_same_however_the_stream_is_split(run_mpy, tmp_path):
    cases = []

    @settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_streams())
    def collect(case):
        cases.append(case)

    collect()
    with (tmp_path / "cases.txt").open("w") as f:
        for _, stream, cuts, _ in cases:
            f.write(f"{stream.hex()};{','.join(map(str, cuts))}\n")
    out = run_mpy("""
import binascii, gc
from bootloader import framing

def decode(stream, cuts):
    d = framing.Decoder()
    got = []
    start = 0
    for end in cuts + [len(stream)]:
        d.feed(stream[start:end])
        start = end
        while True:
            f = d.next()
            if f is None:
                break
            got.append([f[0], f[1], binascii.hexlify(f[2]).decode()])
    return got

results = []
with open(ARGS[0]) as f:
    for line in f:
        hexs, cuts = line.rstrip().split(";")
        stream = binascii.unhexlify(hexs)
        cuts = [int(c) for c in cuts.split(",") if c]
        whole = decode(stream, [])
        split = decode(stream, cuts)
        results.append(whole if whole == split else None)
        gc.collect()
print(json.dumps(results))
""", tmp_path / "cases.txt", heap="512k")
    assert len(out) == len(cases)
    for (frames, stream, cuts, clean), got in zip(cases, out):
        assert got is not None, f"split at {cuts} decodes otherwise than whole: {stream.hex()}"
        if clean:
            assert got == [[t, s, p.hex()] for t, s, p in frames], stream.hex()


# -- writing --------------------------------------------------------------------------------------
def test_device_writes_what_the_host_encodes_for_any_payload_in_any_parts(run_mpy, tmp_path):
    # framing.write sends a frame piece by piece: its bytes must be the host's encoding of the
    # parts joined, wherever the parts split and whatever END and ESC bytes they hold.
    rng = random.Random(7)
    frames = []
    for _ in range(300):
        n = rng.choice([0, 1, 2, 5, 40, 300, framing.MAX_PAYLOAD])
        payload = bytes(rng.choice([0xC0, 0xDB, 0xDC, 0xDD]) if rng.random() < 0.5 else rng.randrange(256)
                        for _ in range(n))
        cuts = sorted(rng.sample(range(n + 1), min(n + 1, rng.randrange(4))))
        parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [n])]
        t, seq = rng.randrange(256), rng.randrange(512)
        frames.append({"type": t, "seq": seq, "parts": [p.hex() for p in parts],
                       "wire": framing.encode(t, seq & 0xFF, payload).hex()})
    (tmp_path / "frames.json").write_text(json.dumps(frames))
    out = run_mpy("""
import binascii, gc, io
from bootloader import framing
ok = []
for f in json.load(open(ARGS[0])):
    out = io.BytesIO()
    framing.write(out, f["type"], f["seq"], *[binascii.unhexlify(p) for p in f["parts"]])
    ok.append(binascii.hexlify(out.getvalue()).decode() == f["wire"])

class Uart:  # takes what it is given, keeps nothing
    def write(self, b):
        pass
reply = b"x" * 2560
gc.collect()
before = gc.mem_alloc()
framing.write(Uart(), 0x81, 1, reply, b"t" * 16)
print(json.dumps({"ok": ok, "allocated": gc.mem_alloc() - before}))
""", tmp_path / "frames.json", heap="2m")
    assert all(out["ok"]), [i for i, ok in enumerate(out["ok"]) if not ok][:5]
    # Nothing the frame's size is built (encoding it whole took ~5 copies of it): a few small
    # objects, the head, the CRC and the views of each part.
    assert out["allocated"] < 1024, out
