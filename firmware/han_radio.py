# What every HAN driver on the meter's IEEE 802.15.4 radio shares (han_driver_*.py subclass it):
# frames of words, one a line, over the board's radio (board.han_radio; the sim's medium,
# hil/supervisor/han.py, lists the frames); the radio's own ping; and the comm test and
# self-test, which each driver's request() carries in its own dialect. A driver hears the other
# technologies' frames on the same air and passes them by. Loaded with a driver, dropped after.
import asyncio
import os
import time
from micropython import const
import han_table

_POLL_MS = const(20)
_RADIO_MS = const(500)
_ANSWER_MS = const(1000)
_SELF_TEST_MS = const(2000)
_PINGS = const(3)


def tag(key, *words):
    """A frame's tag: HMAC-SHA256 with the device's key over the frame's words, 8 bytes."""
    return han_table.hmac(key, " ".join(words).encode())[:8].hex()


def nonce():
    return os.urandom(8).hex()


class Radio:
    # A dialect's application frames: the word of the meter's, of the device's answer, and the
    # one the answer's tag is made over.
    DATA = ("data", "data", "up")

    def __init__(self, radio):
        self._radio = radio
        self._seq = os.urandom(1)[0]
        self.heard_kind = None  # what the device said it is when it asked to join

    def send(self, *words):
        self._radio.send(" ".join(words).encode())

    def stray(self, words):
        """A frame no one waits for: passed by, unless a driver has something to say to it."""

    async def frame(self, want, timeout_ms):
        """The first frame whose words `want` accepts, within timeout_ms, else None."""
        t0 = time.ticks_ms()
        while True:
            f = self._radio.receive()
            if f is not None:
                w = f.decode().split()
                if w and want(w):
                    return w
                self.stray(w)
            elif time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
                return None
            else:
                await asyncio.sleep_ms(_POLL_MS)

    async def radio_ok(self):
        """The radio answers its host (a co-processor that does not is dead or missing)."""
        token = "%d" % time.ticks_ms()
        self.send("ping", token)
        return await self.frame(lambda w: w == ["pong", token], _RADIO_MS) is not None

    async def request(self, dev, body, timeout_ms=_ANSWER_MS):
        """Send `body` to a joined device and wait for its answer (a string), None if none came."""
        out, back, up = self.DATA
        self._seq = (self._seq + 1) & 0xFFFF
        short, seq = "%d" % dev["short"], "%d" % self._seq
        key = bytes.fromhex(dev["key"])
        self.send(out, short, seq, body, tag(key, out, short, seq, body))

        def answer(w):
            return len(w) == 5 and w[0] == back and w[1] == short and w[2] == seq and w[4] == tag(key, up, short, seq, w[3])

        w = await self.frame(answer, timeout_ms)
        return w and w[3]

    async def comm_test(self, dev, pings=_PINGS):
        """(ok, message): every one of `pings` frames answered."""
        answered = 0
        for _ in range(pings):
            answered += await self.request(dev, "ping") == "pong"
        if answered == pings:
            return True, None
        return False, "comm test: %d of %d frames answered" % (answered, pings)

    async def self_test(self, dev):
        """(ok, message): the device's own self-test, as it reports it."""
        a = await self.request(dev, "selftest", _SELF_TEST_MS)
        if a == "selftest:ok":
            return True, None
        if a and a.startswith("selftest:fail:"):
            return False, "self-test failed: " + a[14:]
        return False, "self-test: no answer"


def free_address(taken, highest):
    """A free short address from 1 to `highest` (0 is the meter's own)."""
    while True:
        s = 1 + (os.urandom(1)[0] << 8 | os.urandom(1)[0]) % highest
        if s not in taken:
            return s
