"""The mesh NAN profile's packets on both sides: the meter's driver (firmware/nan_mesh.py, under
MicroPython) and the rig's collector (hil/nan.py) frame the same way; a damaged packet, one for
another network, an oversized or a cut-short one is dropped and counted and the link goes on; the
link's frames travel one per packet (split at the MTU) and come out whole; an attach is admitted
and acknowledged by the collector of that network alone."""
import ast
from pathlib import Path

from hil import nan
from hil.nan import ACK, ATTACH, DATA, MTU, Collector, packet

ROOT = Path(__file__).resolve().parents[2]

# A fake board around byte streams: link_in pollable as asyncio and the driver poll it.
_BOARD = """
sys.path.insert(0, sys.argv[1] + "/firmware")
import io, select
class Radio(io.IOBase):
    def __init__(self, data=b""):
        self.data = bytearray(data)
    def readinto(self, buf):
        n = min(len(buf), len(self.data), 7)  # a few bytes at a time, as a UART gives them
        buf[:n] = self.data[:n]
        self.data[:n] = b""
        return n
    def ioctl(self, req, arg):
        if req == 3:
            return arg & 1 if self.data else 0
        return -22
class Board:
    def __init__(self, data):
        self.link_in = Radio(data)
        self.link_out = io.BytesIO()
"""


def _file(tmp_path, name, data):
    # Data goes in a file: the unix port dies on an argument a few hundred bytes long.
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def test_the_meter_and_the_collector_agree_on_the_profile():
    src = (ROOT / "firmware" / "nan_mesh.py").read_text()
    consts = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            v = node.value
            if isinstance(v, ast.Call) and getattr(v.func, "id", "") == "const":
                v = v.args[0]
            if isinstance(v, ast.Constant):
                consts[node.targets[0].id] = v.value
    assert (consts["SYNC"], consts["DATA"], consts["ATTACH"], consts["ACK"], consts["MTU"], consts["NETWORK_ID"]) \
        == (nan.SYNC, DATA, ATTACH, ACK, MTU, nan.NETWORK_ID)
    # The sync word is an ESC no SLIP escape uses: the old profile never sends it.
    assert nan.SYNC[0] == 0xDB and nan.SYNC[1] not in (0xDC, 0xDD)


def test_malformed_packets_are_dropped_and_the_link_goes_on(run_mpy, tmp_path):
    net = nan.NETWORK_ID
    good1, good2 = packet(DATA, net, b"\xc0first frame\xc0"), packet(DATA, net, b"\xc0second\xc0")
    bad_crc = bytearray(packet(DATA, net, b"\xc0damaged\xc0"))
    bad_crc[9] ^= 0x01
    other_net = packet(DATA, net ^ 0x0101, b"\xc0not ours\xc0")
    oversized = nan.SYNC + bytes((DATA, net & 0xFF, net >> 8, MTU + 1)) + bytes(MTU + 5)
    cut_short = packet(DATA, net, b"\xc0cut\xc0")[:-3]
    wire = (b"old-profile noise \xdb\xdc" + good1 + bytes(bad_crc) + other_net + oversized + cut_short
            + packet(ACK, net) + good2)
    out = run_mpy(_BOARD + """
import nan_mesh
link = nan_mesh.MeshLink(Board(open(ARGS[0], "rb").read()))
got = bytearray()
buf = bytearray(5)
for _ in range(1000):
    n = link.readinto(buf)
    if n:
        got += buf[:n]
    elif not link.ioctl(3, 1):
        break
print(json.dumps({"got": got.hex(), "dropped": link.dropped, "in": link.packets_in, "state": link.state}))
""", _file(tmp_path, "wire", wire))
    assert bytes.fromhex(out["got"]) == b"\xc0first frame\xc0\xc0second\xc0"
    assert out["in"] == 3 and out["state"] == "attached"
    assert out["dropped"] >= 4  # damaged, another network's, oversized, cut short (its sync word met again)


def test_frames_travel_a_packet_each_and_come_out_whole(run_mpy, tmp_path):
    payloads = ["", "61" * 10, "c0db" * 300, "00" * (MTU - 8), "00" * (MTU - 7), "00" * (MTU - 6)]
    out = run_mpy(_BOARD + """
import nan_mesh
from bootloader import framing
link, plain = nan_mesh.MeshLink(Board(b"")), io.BytesIO()
for i, p in enumerate(open(ARGS[0]).read().split(",")):
    body = bytes.fromhex(p)
    framing.write(link, 0x81, i, body)
    framing.write(plain, 0x81, i, body)
print(json.dumps({"wire": link._out.getvalue().hex(), "frames": plain.getvalue().hex(), "out": link.packets_out}))
""", _file(tmp_path, "payloads", ",".join(payloads).encode()), heap="256k")
    collector = Collector()
    collector.profile = nan.MESH
    assert collector.from_meter(bytes.fromhex(out["wire"])) == bytes.fromhex(out["frames"])
    assert collector.counters[nan.MESH]["dropped"] == 0
    # A packet per frame, a frame longer than the MTU in pieces: the 1,208 escaped bytes in 6;
    # a 240-byte frame fills one exactly, and the closing END of a 241-byte one goes alone.
    assert out["out"] == 1 + 1 + 6 + 1 + 2 + 2


def test_the_collector_admits_its_network_and_no_other():
    sent = []
    c = Collector(0x2C41)
    c.send = sent.append
    assert c.to_meter(b"\xc0plain\xc0") == b"\xc0plain\xc0"            # the old profile: as it is
    assert c.from_meter(b"\xc0reply\xdb") == b"\xc0reply"               # an ESC waits for its byte
    assert c.from_meter(b"\xdc\xc0") == b"\xdb\xdc\xc0"
    assert c.from_meter(packet(ATTACH, 0x0BAD)) == b"" and sent == [] and c.profile == nan.SERIAL
    assert c.counters["attach"] == {"admitted": 0, "refused": 1}
    half = packet(ATTACH, 0x2C41)
    assert c.from_meter(half[:5]) == b"" and c.from_meter(half[5:]) == b""
    assert sent == [packet(ACK, 0x2C41)] and c.profile == nan.MESH
    wire = c.to_meter(b"x" * (MTU + 1))
    assert wire == packet(DATA, 0x2C41, b"x" * MTU) + packet(DATA, 0x2C41, b"x")
    assert c.from_meter(b"noise" + packet(DATA, 0x2C41, b"\xc0ok\xc0")) == b"\xc0ok\xc0"
    c.reset()                                                           # the meter restarted
    assert c.profile == nan.SERIAL and c.to_meter(b"abc") == b"abc"
    assert Collector(None).from_meter(packet(ATTACH, 0x2C41)) == b""    # a collector of the old NAN alone
