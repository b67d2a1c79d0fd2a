"""Framing and boot control under MicroPython, against vectors the host produced."""
import json
from pathlib import Path

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
    got += d.feed(stream[i:i + 7])
print(json.dumps({
    "encode_ok": [binascii.hexlify(framing.encode(v["type"], v["seq"], binascii.unhexlify(v["payload"]))).decode() == v["wire"] for v in vs],
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
frames = d.feed(binascii.unhexlify(ARGS[0]))
frames += d.feed(binascii.unhexlify(ARGS[1]))
frames += d.feed(b"\\xc0" + b"x" * 9000)    # oversized garbage with no end
frames += d.feed(binascii.unhexlify(ARGS[1]))
print(json.dumps({"n": len(frames), "payloads": [bytes(p).decode() for _, _, p in frames],
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
