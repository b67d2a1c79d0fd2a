# A new NAN radio profile, a mesh network's: the link's bytes travel in packets, and the network's
# collector carries a meter's traffic only once it has admitted the meter (attach, acknowledged).
#
# Packet: SYNC (2) | kind u8 | network id u16 LE | length u8 | payload | CRC-32 LE of kind..payload.
# The sync word is SLIP's ESC followed by a byte no SLIP escape uses, so the old NAN (serial SLIP
# frames) never sends it: one collector tells the two profiles apart on the same medium. A packet
# carries one link frame, or a piece of one longer than the MTU. A packet that is damaged, or for
# another network, is dropped and counted; the search for the next sync word goes on inside it.
import asyncio
import io
import select
import struct
import time
from binascii import crc32
from micropython import const

SYNC = b"\xdb\x4e"
DATA = const(1)
ATTACH = const(2)
ACK = const(3)
NETWORK_ID = const(0x2C41)  # the utility's mesh network this image joins
MTU = const(240)
_HEAD = const(6)
_CRC = const(4)
_ESC = const(0xDB)
_END = const(0xC0)  # SLIP's frame end: a packet ends where a link frame does
_POLL = const(3)
_POLLIN = const(1)
_POLLOUT = const(4)
_EINVAL = const(22)
_ASK_EVERY_MS = const(500)
ATTACH_WAIT_MS = const(5000)  # a collector in range acknowledges at once
_ASK_LATER_MS = const(5000)   # after that the meter keeps asking, as a node looks for its network

ATTACHING = "attaching"
ATTACHED = "attached"
NOT_ADMITTED = "not admitted"


def packet(kind, network_id, payload=b""):
    body = struct.pack("<BHB", kind, network_id, len(payload)) + payload
    return SYNC + body + struct.pack("<I", crc32(body))


class MeshLink(io.IOBase):
    """The link over the mesh radio: a stream of the link's bytes for the link server (readinto
    and ioctl, as asyncio polls it; write), packets on the board's stream."""

    def __init__(self, board, network_id=NETWORK_ID):
        self._in = board.link_in
        self._out = board.link_out
        self.network_id = network_id
        self._radio = select.poll()
        self._radio.register(board.link_in, select.POLLIN)
        self._rx = bytearray(2 * (_HEAD + MTU + _CRC))  # a packet being received and the next
        self._rx_mv = memoryview(self._rx)
        self._n = 0  # bytes held
        self._pos = 0  # the first byte held that is not parsed yet
        self._data = self._data_end = 0  # a data packet's payload, being read: _rx[_data:_data_end]
        self._parsed = True  # every whole packet held has been parsed: wait for the radio
        self._tx = bytearray(SYNC + struct.pack("<BHB", DATA, network_id, 0) + bytes(MTU + _CRC))
        self._tx_mv = memoryview(self._tx)
        self._tx_n = 0  # payload bytes gathered for the next data packet
        self._ended = True  # the last data packet sent ended a link frame
        self.link_in = self.link_out = self  # what the link server serves: this stream, both ways
        self.state = ATTACHING
        self.packets_in = self.packets_out = self.dropped = 0

    # -- the link server's stream ------------------------------------------------------------
    def readinto(self, buf):
        if self._data == self._data_end and not self._next():
            return None
        n = min(len(buf), self._data_end - self._data)
        buf[:n] = self._rx_mv[self._data:self._data + n]
        self._data += n
        return n

    def ioctl(self, req, arg):
        if req != _POLL:
            return -_EINVAL
        ready = self._data < self._data_end or not self._parsed
        if not ready:
            for _ in self._radio.ipoll(0):  # ipoll allocates nothing
                ready = True
        return (arg & _POLLIN if ready else 0) | (arg & _POLLOUT)

    def write(self, buf):
        mv = memoryview(buf)
        n = len(mv)
        i = 0
        while i < n:
            take = min(n - i, MTU - self._tx_n)
            at = _HEAD + self._tx_n
            self._tx_mv[at:at + take] = mv[i:i + take]
            self._tx_n += take
            i += take
            if self._tx_n == MTU:
                self._send()
        # A frame's closing END sends the packet; the lone END that opens the next frame after
        # one sent whole waits for the frame.
        if n and mv[n - 1] == _END and (self._tx_n > 1 or not self._ended):
            self._send()
        return n

    # -- attaching ---------------------------------------------------------------------------
    async def attach(self):
        """Ask the collector to admit this meter until it acknowledges: every half second at
        first; after ATTACH_WAIT_MS the link is not admitted, and the meter asks every 5 s."""
        ask = packet(ATTACH, self.network_id)
        t0 = time.ticks_ms()
        while self.state != ATTACHED:
            self._out.write(ask)
            if time.ticks_diff(time.ticks_ms(), t0) >= ATTACH_WAIT_MS:
                self.state = NOT_ADMITTED
            await asyncio.sleep_ms(_ASK_EVERY_MS if self.state == ATTACHING else _ASK_LATER_MS)

    # -- packets -----------------------------------------------------------------------------
    def _send(self):
        n = self._tx_n
        tx = self._tx
        tx[5] = n
        end = _HEAD + n
        struct.pack_into("<I", tx, end, crc32(self._tx_mv[2:end]))
        self._out.write(self._tx_mv[:end + _CRC])
        self._ended = tx[end - 1] == _END
        self._tx_n = 0
        self.packets_out += 1

    def _next(self):
        """The next data packet's payload from the radio into _rx[_data:_data_end]; False when
        no whole one has arrived."""
        while True:
            if self._parse():
                if self._data < self._data_end:
                    self._parsed = False  # more packets may be held
                    return True
            elif not self._receive():
                self._parsed = True
                return False

    def _receive(self):
        n, pos = self._n, self._pos
        if pos:  # what has been parsed leaves (nothing is being read: _next runs only then)
            self._rx_mv[:n - pos] = self._rx_mv[pos:n]
            self._n = n = n - pos
            self._pos = 0
        got = self._in.readinto(self._rx_mv[n:])
        if not got:
            return False
        self._n += got
        return True

    def _parse(self):
        """One packet from the bytes held: True when one was taken, False when what is held is
        not a whole packet yet."""
        rx, pos, n = self._rx, self._pos, self._n
        k = rx.find(SYNC, pos, n)
        if k < 0:
            # Noise, or the old profile's bytes: gone, but for an ESC that may begin a sync word.
            self._pos = n - 1 if n > pos and rx[n - 1] == _ESC else n
            return False
        if n - k < _HEAD:
            self._pos = k
            return False
        end = k + _HEAD + rx[k + 5] + _CRC
        if rx[k + 5] > MTU:
            return self._drop(k)
        if end > n:
            self._pos = k
            return False
        if struct.unpack_from("<I", rx, end - _CRC)[0] != crc32(self._rx_mv[k + 2:end - _CRC]):
            return self._drop(k)
        if rx[k + 3] | rx[k + 4] << 8 != self.network_id:
            return self._drop(k)
        self._pos = end
        self.packets_in += 1
        kind = rx[k + 2]
        if kind == DATA:
            self._data, self._data_end = k + _HEAD, end - _CRC
        elif kind == ACK:
            self.state = ATTACHED
        return True

    def _drop(self, k):
        self.dropped += 1
        self._pos = k + 2  # past this sync word: a packet may begin inside the damaged one
        return True


def open(board):
    link = MeshLink(board)
    asyncio.create_task(link.attach())
    return link


async def check(m):
    """Attached: the collector acknowledged within ATTACH_WAIT_MS (the check waits that long for
    a boot's attach) and carries the link's packets."""
    link = m.nan
    t0 = time.ticks_ms()
    while link.state == ATTACHING and time.ticks_diff(time.ticks_ms(), t0) < ATTACH_WAIT_MS + _ASK_EVERY_MS:
        await asyncio.sleep_ms(50)
    where = "mesh network 0x%04x" % link.network_id
    if link.state != ATTACHED:
        return ("fail", "%s: no collector admitted the meter (no acknowledgement in %d s)"
                % (where, ATTACH_WAIT_MS // 1000), link.packets_in)
    return "pass", where + ": attached", link.packets_in
