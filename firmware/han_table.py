# The HAN's device table on the meter's flash (/data/han, a store.py record: replaced whole, so
# a power cut leaves the old table or the new one): EUI-64, technology, kind, short address, link
# key, state and the last outcome of each device. A removed device's row goes, and its key with
# it. Also the checks of what identifies a device (EUI-64, install code and its CRC-16), and the
# technologies' drivers: the image has one for a technology exactly when it ships its module,
# han_driver_<tech>.py (the technology's name with "_" for "-"), found in the image's file list,
# not in a table (so not in loader.TASKS either: drop_drivers() lets them go). Loaded for a
# request or a HAN job and dropped after (loader.py).
import hashlib
import json
import os
import sys
import loader
import store
from bootloader.api import CommandError

PATH = "/data/han"
KINDS = ("thermostat", "display", "load-control", "ev-charger")
_CODE_BYTES = (6, 8, 12, 16)


def drivers():
    """The technologies whose driver this image ships, sorted: the modules named han_driver_*
    in the import path's folders (on a meter, the running image's file list)."""
    found = []
    for folder in sys.path:
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # a path entry that is no folder (.frozen)
        for n in names:
            if n.startswith("han_driver_") and n.endswith((".mpy", ".py")):
                tech = n[11:n.rindex(".")].replace("_", "-")
                if tech not in found:
                    found.append(tech)
    return sorted(found)


async def driver(tech):
    """The driver module of `tech` (one of drivers()), loaded: link_key(code), Driver(radio)."""
    return await loader.room("han_driver_" + tech.replace("-", "_"))


def drop_drivers(techs):
    """The driver modules of `techs` (what drivers() found) out of the heap, as the loader drops
    its TASKS when a call returns."""
    loader.drop(tuple("han_driver_" + t.replace("-", "_") for t in techs))


def load():
    """{eui64: row}; an empty table when none is stored or it is damaged."""
    body, _ = store.load(PATH)
    return json.loads(body) if body else {}


def save(table):
    store.save(PATH, json.dumps(table).encode())


def public(row):
    """A row as the link shows it: never its key."""
    out = {k: v for k, v in row.items() if k != "key"}
    out["key_held"] = "key" in row
    return out


def eui64(text):
    h = text.upper() if isinstance(text, str) else ""
    if len(h) != 16 or any(c not in "0123456789ABCDEF" for c in h) or h in ("0" * 16, "F" * 16):
        raise CommandError("bad_request", "eui64 must be 16 hex digits, not all 0 nor all F")
    return h


def crc16_x25(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def install_code(text):
    """The install code's bytes (CRC included), checked: 6, 8, 12 or 16 bytes and its CRC-16/X-25
    low byte first, as Zigbee labels them."""
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raise CommandError("han_bad_install_code", "install_code is not hex")
    if len(raw) - 2 not in _CODE_BYTES:
        raise CommandError("han_bad_install_code", "install code is %d bytes; it must be 6, 8, 12 or 16 bytes "
                           "and a 2-byte CRC" % len(raw))
    if raw[-2] | raw[-1] << 8 != crc16_x25(raw[:-2]):
        raise CommandError("han_bad_install_code", "install code fails its CRC-16: mistyped?")
    return raw


def hmac(key, msg):
    """HMAC-SHA256 (RFC 2104): MicroPython has no hmac module."""
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()
