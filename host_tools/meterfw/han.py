"""The home area network's identities, as Zigbee Smart Energy has them: a device's EUI-64 and its
install code with the code's CRC-16, and the key each technology derives from the code. The meter
checks the same (firmware/han_table.py, han_driver_*.py); the rig's simulated devices
(hil/supervisor/han.py) derive their keys here.

zigbee-se's link key: Zigbee derives it with the Matyas-Meyer-Oseas hash of the install code
(AES-128 based). This is a documented stand-in: HMAC-SHA256 keyed with the whole install code
(CRC included) over LINK_KEY_LABEL, truncated to 16 bytes. Both ends derive it the same way, which
is all the joining needs; a real radio's stack would use MMO.

new-tech (Thread-like commissioning on the same radio): the joiner's passcode (Thread's PSKd) is
the install code (CRC included) in Thread's base-32 alphabet; the key both sides prove they hold
is HMAC-SHA256 keyed with the passcode over NEW_TECH_LABEL, 16 bytes (a stand-in for the shared
secret of Thread's EC-JPAKE). A joiner is steered by its joiner ID: SHA-256 of its EUI-64, the
first 8 bytes, with the local bit (0x02) of the first set, as Thread has it.
"""
from __future__ import annotations

import hashlib
import hmac

import crcmod.predefined

TECHS = ("zigbee-se", "plc", "new-tech")
KINDS = ("thermostat", "display", "load-control", "ev-charger")
CODE_BYTES = (6, 8, 12, 16)  # an install code's lengths, before its 2-byte CRC
LINK_KEY_LABEL = b"meterfw han link key"
NEW_TECH_LABEL = b"meterfw new-tech pskd"
PASSCODE_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXY"  # Thread's: no I, O, Q, Z


class HanError(ValueError):
    """A bad EUI-64 or install code, said in one line."""


# CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF): the install code's CRC, from the same
# library as the link's CRC-32 (framing.py); the meter computes its own (firmware/han_table.py).
crc16_x25 = crcmod.predefined.mkPredefinedCrcFun("x-25")


def parse_eui64(text: str) -> str:
    """An EUI-64 as 16 upper-case hex digits (colons, dashes allowed in); all-zero and all-ones
    are no device's."""
    h = str(text).replace(":", "").replace("-", "").upper()
    if len(h) != 16 or any(c not in "0123456789ABCDEF" for c in h):
        raise HanError(f"EUI-64 {text!r} is not 16 hex digits")
    if h in ("0" * 16, "F" * 16):
        raise HanError(f"EUI-64 {h} is reserved, no device's")
    return h


def parse_install_code(text: str) -> bytes:
    """An install code with its CRC (hex), checked: 6, 8, 12 or 16 bytes and the CRC-16/X-25 of
    them, low byte first."""
    h = str(text).replace(":", "").replace("-", "").replace(" ", "")
    try:
        raw = bytes.fromhex(h)
    except ValueError:
        raise HanError(f"install code {text!r} is not hex") from None
    if len(raw) - 2 not in CODE_BYTES:
        raise HanError(f"install code is {len(raw)} bytes; it must be 6, 8, 12 or 16 bytes and a 2-byte CRC")
    if int.from_bytes(raw[-2:], "little") != crc16_x25(raw[:-2]):
        raise HanError(f"install code {h.upper()} fails its CRC: mistyped?")
    return raw


def with_crc(code: bytes) -> bytes:
    """An install code's bytes with their CRC appended (how a device is labelled)."""
    return code + crc16_x25(code).to_bytes(2, "little")


def link_key(install_code: bytes) -> bytes:
    """The link key an install code (with its CRC) derives; see the module's note."""
    return hmac.new(install_code, LINK_KEY_LABEL, hashlib.sha256).digest()[:16]


def passcode(install_code: bytes) -> str:
    """A new-tech joiner's passcode: the install code (CRC included), 5 bits a character."""
    bits = "".join(f"{b:08b}" for b in install_code)
    bits += "0" * (-len(bits) % 5)
    return "".join(PASSCODE_ALPHABET[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def new_tech_key(install_code: bytes) -> bytes:
    return hmac.new(passcode(install_code).encode(), NEW_TECH_LABEL, hashlib.sha256).digest()[:16]


def joiner_id(eui64: str) -> str:
    jid = bytearray(hashlib.sha256(bytes.fromhex(eui64)).digest()[:8])
    jid[0] |= 0x02
    return jid.hex()


# The key a device of each technology derives from its install code (plc's is never used: no
# radio hears it).
DEVICE_KEYS = {"zigbee-se": link_key, "new-tech": new_tech_key, "plc": link_key}


def tag(key: bytes, *words) -> str:
    """The tag a radio frame carries: HMAC-SHA256 with the link key over its words, 8 bytes."""
    return hmac.new(key, " ".join(map(str, words)).encode(), hashlib.sha256).digest()[:8].hex()
