# The HAN driver for Zigbee Smart Energy (technology "zigbee-se"; a driver is found by its
# module's name, han_table.drivers()). The meter is the trust centre: it permits joining, the
# device asks to associate, the meter sends the transport key tagged with the link key its
# install code derives, and the device confirms with it; a device without the right key can
# neither join nor be heard. Loaded for a HAN job or a join request and dropped after (loader.py).
from micropython import const
import han_table
from han_radio import Radio, free_address, nonce, tag

_CONFIRM_MS = const(2000)
_LABEL = b"meterfw han link key"


def link_key(code):
    """The link key: Zigbee derives it from the install code with the Matyas-Meyer-Oseas hash;
    this meter uses a documented stand-in, HMAC-SHA256 keyed with the install code (its CRC
    included) over _LABEL, truncated to 16 bytes (host_tools/meterfw/han.py derives it the same way)."""
    return han_table.hmac(code, _LABEL)[:16]


class Driver(Radio):
    def __init__(self, radio):
        super().__init__(radio)
        self._permitted = None
        self.denied = 0

    def stray(self, w):
        # A device asking to join that is not the one the window is for: the meter holds no key for it.
        if len(w) == 3 and w[0] == "assoc" and w[1] != self._permitted:
            self.denied += 1
            self.send("deny", w[1])

    async def join(self, eui, key, window_s, taken):
        """Open the join window for `eui` for window_s from now; the device joins with the key
        its install code derives. (short address, None) once it has, or (None, why not). `taken`:
        short addresses in use."""
        self._permitted = eui
        self.send("permit", "%d" % window_s)
        try:
            w = await self.frame(lambda w: len(w) == 3 and w[0] == "assoc" and w[1] == eui, window_s * 1000)
            if w is None:
                return None, "the device did not ask to join within the %d s window" % window_s
            self.heard_kind = w[2]
            short = "%d" % free_address(taken, 0xFFF7)  # Zigbee's 0x0001..0xFFF7
            n = nonce()
            self.send("key", eui, short, n, tag(key, "key", eui, short, n))
            w = await self.frame(lambda w: len(w) == 4 and w[0] == "confirm" and w[1] == eui, _CONFIRM_MS)
            if w is None:
                return None, "the device asked to join but did not take the key: is the install code the device's?"
            if w[2] != short or w[3] != tag(key, "confirm", eui, short, n):
                return None, "the device's key confirmation does not verify: is the install code the device's?"
            return int(short), None
        finally:
            self._permitted = None
            self.send("permit", "0")

    def leave(self, eui, short, key):
        short = "%d" % short
        self.send("leave", eui, short, tag(key, "leave", eui, short))
