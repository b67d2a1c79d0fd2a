# The HAN driver for Zigbee Smart Energy, behind the HAN's driver interface: radio_ok(), join()
# (the join window: the meter is the trust centre), request() (send and receive), comm_test(),
# self_test() and leave(). It speaks to the board's radio (board.han_radio), one frame a line
# (the sim's medium, hil/supervisor/han.py, lists them); frames carry a tag made with the
# device's link key, so a device without the right key can neither join nor be heard. Loaded
# for a HAN job and dropped after (loader.py).
import asyncio
import os
import time
from micropython import const
import han_table

TECH = "zigbee-se"
_POLL_MS = const(20)
_RADIO_MS = const(500)
_CONFIRM_MS = const(2000)
_ANSWER_MS = const(1000)
_SELF_TEST_MS = const(2000)
_PINGS = const(3)


def _tag(key, *words):
    return han_table.hmac(key, " ".join(words).encode())[:8].hex()


class Driver:
    def __init__(self, radio):
        self._radio = radio
        self._seq = os.urandom(1)[0]
        self.denied = 0
        self.heard_kind = None  # what the device said it is when it asked to join

    def _send(self, *words):
        self._radio.send(" ".join(words).encode())

    async def _frame(self, want, timeout_ms, permitted=()):
        """The first frame whose words `want` accepts, within timeout_ms, else None. A device
        asking to join that is not `permitted` is refused: the meter holds no key for it."""
        t0 = time.ticks_ms()
        while True:
            f = self._radio.receive()
            if f is not None:
                w = f.decode().split()
                if w and want(w):
                    return w
                if len(w) == 3 and w[0] == "assoc" and w[1] not in permitted:
                    self.denied += 1
                    self._send("deny", w[1])
            elif time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
                return None
            else:
                await asyncio.sleep_ms(_POLL_MS)

    def drain(self):
        """Frames that came while no job listened (late answers, strays): stale now."""
        while self._radio.receive() is not None:
            pass

    async def radio_ok(self):
        """The radio answers its host (a co-processor that does not is dead or missing)."""
        token = "%d" % time.ticks_ms()
        self._send("ping", token)
        return await self._frame(lambda w: w == ["pong", token], _RADIO_MS) is not None

    async def join(self, eui, key, window_ms, taken, window_s):
        """Open the join window for `eui` for window_ms (what is left of the window_s asked
        for); the device joins with the key its install code derives. (short address, None) once
        it has, or (None, why not). `taken`: short addresses in use."""
        t0 = time.ticks_ms()
        self._send("permit", "%d" % ((window_ms + 999) // 1000))
        try:
            while True:
                left = window_ms - time.ticks_diff(time.ticks_ms(), t0)
                w = await self._frame(lambda w: len(w) == 3 and w[0] == "assoc" and w[1] == eui, max(left, 0), (eui,))
                if w is None:
                    return None, "the device did not ask to join within the %d s window" % window_s
                self.heard_kind = w[2]
                short = "%d" % _short(taken)
                nonce = os.urandom(8).hex()
                self._send("key", eui, short, nonce, _tag(key, "key", eui, short, nonce))
                good = _tag(key, "confirm", eui, short, nonce)
                w = await self._frame(lambda w: len(w) == 4 and w[0] == "confirm" and w[1] == eui, _CONFIRM_MS, (eui,))
                if w is not None and w[2] == short and w[3] == good:
                    return int(short), None
                if w is None:
                    return None, "the device asked to join but did not take the key: is the install code the device's?"
                return None, "the device's key confirmation does not verify: is the install code the device's?"
        finally:
            self._send("permit", "0")

    async def request(self, dev, body, timeout_ms=_ANSWER_MS):
        """Send `body` to a joined device and wait for its answer (a string), None if none came."""
        self._seq = (self._seq + 1) & 0xFFFF
        short, seq = "%d" % dev["short"], "%d" % self._seq
        key = bytes.fromhex(dev["key"])
        self._send("data", short, seq, body, _tag(key, "data", short, seq, body))

        def answer(w):
            return len(w) == 5 and w[0] == "data" and w[1] == short and w[2] == seq and w[4] == _tag(key, "up", short, seq, w[3])

        w = await self._frame(answer, timeout_ms)
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

    def leave(self, eui, short, key):
        short = "%d" % short
        self._send("leave", eui, short, _tag(key, "leave", eui, short))


def _short(taken):
    """A free short address (Zigbee's 0x0001..0xFFF7; the trust centre is 0)."""
    while True:
        s = 1 + (os.urandom(1)[0] << 8 | os.urandom(1)[0]) % 0xFFF7
        if s not in taken:
            return s
