# The HAN driver for "new-tech", a Thread-like technology on the same IEEE 802.15.4 radio as
# Zigbee, with its own dialect and its own commissioning (modelled on Thread's MeshCoP joiner):
# the meter, as commissioner, steers the join to one joiner by its joiner ID (SHA-256 of its
# EUI-64, first 8 bytes, the local bit set), not by its EUI-64; the joiner says hello with a
# nonce; each side then proves it holds the key that the joiner's passcode derives (the passcode,
# Thread's PSKd, is the install code written in Thread's base-32 alphabet; the proofs stand in
# for Thread's EC-JPAKE handshake), the meter's proof carrying the device's RLOC16 address.
# Application frames are CoAP-like (a message id, answered by an ack). Zigbee devices ignore
# these frames and new-tech devices Zigbee's. A meter has this technology when its image ships
# this module (han_table.drivers()). Loaded for a HAN job or a join request, dropped after.
import hashlib
from micropython import const
import han_table
from han_radio import Radio, free_address, nonce, tag

_PROOF_MS = const(2000)
_LABEL = b"meterfw new-tech pskd"
_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXY"  # Thread's passcode characters: no I, O, Q, Z


def passcode(code):
    """The joiner's passcode: the install code (CRC included), 5 bits a character."""
    bits = n = 0
    out = []
    for b in code:
        bits, n = bits << 8 | b, n + 8
        while n >= 5:
            n -= 5
            out.append(_ALPHABET[bits >> n & 31])
    if n:
        out.append(_ALPHABET[bits << (5 - n) & 31])
    return "".join(out)


def link_key(code):
    """The key both sides prove they hold: HMAC-SHA256 keyed with the passcode over _LABEL,
    16 bytes (host_tools/meterfw/han.py derives it the same way)."""
    return han_table.hmac(passcode(code).encode(), _LABEL)[:16]


def joiner_id(eui):
    jid = bytearray(hashlib.sha256(bytes.fromhex(eui)).digest()[:8])
    jid[0] |= 0x02
    return bytes(jid).hex()


class Driver(Radio):
    DATA = ("coap", "ack", "ack")  # CoAP-like: a message id, answered by an ack

    async def join(self, eui, key, window_s, taken):
        """Steer joining to `eui` for window_s from now; the device joins proving the key its
        passcode derives. (RLOC16, None) once it has, or (None, why not). `taken`: short
        addresses in use."""
        jid = joiner_id(eui)
        self.send("steer", jid, "%d" % window_s)
        try:
            w = await self.frame(lambda w: len(w) == 4 and w[0] == "hello" and w[1] == jid, window_s * 1000)
            if w is None:
                return None, "the device did not ask to join within the %d s window" % window_s
            self.heard_kind, theirs = w[2], w[3]
            rloc = "%d" % free_address(taken, 0x1FF)  # a child of the meter's router 0
            ours = nonce()
            self.send("chal", jid, rloc, ours, tag(key, "chal", jid, rloc, theirs, ours))
            w = await self.frame(lambda w: len(w) == 4 and w[0] == "proof" and w[1] == jid, _PROOF_MS)
            if w is None:
                return None, "the device asked to join but did not accept the meter's proof: is the install code the device's?"
            if w[2] != rloc or w[3] != tag(key, "proof", jid, rloc, theirs, ours):
                return None, "the device's proof does not verify: is the install code the device's?"
            return int(rloc), None
        finally:
            self.send("steer", jid, "0")

    def leave(self, eui, short, key):
        jid, rloc = joiner_id(eui), "%d" % short
        self.send("release", jid, rloc, tag(key, "release", jid, rloc))
