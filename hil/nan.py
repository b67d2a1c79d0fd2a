"""The NAN medium between the host's port and the meter: the network's collector.

The collector serves two radio profiles on one medium: the old NAN (`serial`: the link's bytes as
they are) and the mesh profile of firmware/nan_mesh.py (packets with a sync word, the network id,
a length and a CRC-32). A meter comes up in the old profile after every reset or power cycle (the
rig knows them: `Line.set_device_up`) and moves to the mesh profile once it asks to attach with a
network id the collector admits, which the collector acknowledges, as a node registers with its
network after a reboot. A meter whose network is not admitted gets no answer and no traffic.

The host tools need no change: the collector decodes what the meter sends and encodes what the
host sends in the profile the meter uses now. Its counters say which profile carried the traffic.
The mesh sync word is SLIP's ESC followed by a byte no SLIP escape uses, so the old profile never
sends it and one receiver tells the two apart (as a multi-mode radio tells preambles apart).
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable

SYNC = b"\xdb\x4e"
DATA, ATTACH, ACK = 1, 2, 3
NETWORK_ID = 0x2C41  # the network a mesh image joins (firmware/nan_mesh.py), admitted by default
MTU = 240
HEAD = 6
CRC = 4
SERIAL = "serial"
MESH = "mesh"


def packet(kind: int, network_id: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BHB", kind, network_id, len(payload)) + payload
    return SYNC + body + struct.pack("<I", zlib.crc32(body))


def parse_network(text) -> int | None:
    """A network id as sim.json or `meterfw-sim start --nan-network` gives it: 16 bits, decimal or
    0x-hex, or "none" (a collector of the old NAN alone)."""
    if text is None or text == "none":
        return None
    try:
        value = text if isinstance(text, int) else int(str(text), 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"NAN network id {text!r} is not 16 bits (0x0000-0xFFFF) or 'none'")
    return value


class Collector:
    """One meter's collector. `to_meter` and `from_meter` turn the bytes each way into what the
    other end receives; `send` puts the collector's own packets (acknowledgements) toward the
    meter; `reset()` at every boot puts the meter back in the old profile."""

    def __init__(self, network_id: int | None = NETWORK_ID, log: Callable[[str], None] = lambda msg: None):
        self.network_id = network_id  # the mesh network admitted, or None
        self.log = log
        self.send: Callable[[bytes], None] = lambda data: None
        self.profile = SERIAL
        self._held = bytearray()  # the meter's bytes that may begin a packet not yet whole
        self.counters = {
            SERIAL: {"bytes_to_meter": 0, "bytes_from_meter": 0},
            MESH: {"packets_to_meter": 0, "packets_from_meter": 0, "bytes_to_meter": 0, "bytes_from_meter": 0,
                   "dropped": 0},
            "attach": {"admitted": 0, "refused": 0},
        }

    def reset(self) -> None:
        if self.profile != SERIAL:
            self.log("nan: meter restarted: old profile (serial) until it attaches again")
        self.profile = SERIAL
        self._held.clear()

    def to_meter(self, data: bytes) -> bytes:
        if self.profile == SERIAL:
            self.counters[SERIAL]["bytes_to_meter"] += len(data)
            return data
        mesh = self.counters[MESH]
        mesh["bytes_to_meter"] += len(data)
        pieces = [packet(DATA, self.network_id, data[i:i + MTU]) for i in range(0, len(data), MTU)]
        mesh["packets_to_meter"] += len(pieces)
        return b"".join(pieces)

    def from_meter(self, data: bytes) -> bytes:
        if self.profile == SERIAL and not self._held and SYNC not in data and not data.endswith(SYNC[:1]):
            self.counters[SERIAL]["bytes_from_meter"] += len(data)
            return data  # the old profile's bytes, as they are: no copy
        buf = self._held
        buf += data
        out = bytearray()
        pos = 0
        while True:
            k = buf.find(SYNC, pos)
            if k < 0:
                # An ESC at the end may begin a sync word: held for the next bytes (in the old
                # profile it is a SLIP escape, whose second byte follows at once).
                end = len(buf) - 1 if buf.endswith(SYNC[:1]) else len(buf)
                self._plain(out, buf[pos:end])
                pos = end
                break
            self._plain(out, buf[pos:k])
            if len(buf) - k >= HEAD and buf[k + 5] > MTU:
                pos = self._dropped(k)
            elif len(buf) - k < HEAD or len(buf) - k < HEAD + buf[k + 5] + CRC:
                pos = k  # not whole yet
                break
            else:
                pos = self._packet(out, buf, k)
        del buf[:pos]
        return bytes(out)

    def stats(self) -> dict:
        return {"profile": self.profile, "network_id": self.network_id, **self.counters}

    # -- what the meter sent -----------------------------------------------------------------
    def _plain(self, out: bytearray, data) -> None:
        if not data:
            return
        if self.profile == SERIAL:
            self.counters[SERIAL]["bytes_from_meter"] += len(data)
            out += data
        # On the mesh, bytes outside packets are noise to the collector.

    def _dropped(self, k: int) -> int:
        self.counters[MESH]["dropped"] += 1
        return k + len(SYNC)  # a packet may begin inside a damaged one

    def _packet(self, out: bytearray, buf: bytearray, k: int) -> int:
        """The whole packet at buf[k]: its payload to the host, or the attach answered; returns
        where the next one may begin."""
        kind, net, length = struct.unpack_from("<BHB", buf, k + 2)
        end = k + HEAD + length + CRC
        if struct.unpack_from("<I", buf, end - CRC)[0] != zlib.crc32(buf[k + 2:end - CRC]):
            return self._dropped(k)
        if kind == ATTACH:
            self._attach(net)
        elif kind == DATA and self.profile == MESH and net == self.network_id:
            mesh = self.counters[MESH]
            mesh["packets_from_meter"] += 1
            mesh["bytes_from_meter"] += length
            out += buf[k + HEAD:end - CRC]
        else:
            return self._dropped(k)
        return end

    def _attach(self, net: int) -> None:
        if net != self.network_id:
            self.counters["attach"]["refused"] += 1
            if self.counters["attach"]["refused"] == 1:
                self.log(f"nan: attach to network 0x{net:04x} refused (this collector admits "
                         f"{'none' if self.network_id is None else f'0x{self.network_id:04x}'})")
            return
        self.counters["attach"]["admitted"] += 1
        if self.profile != MESH:
            self.log(f"nan: meter attached to mesh network 0x{net:04x}")
        self.profile = MESH
        self.send(packet(ACK, net))
        self.counters[MESH]["packets_to_meter"] += 1
