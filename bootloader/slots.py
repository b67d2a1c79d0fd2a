# What the bootloader knows about the two slot files: their manifests and whether they verify.
import hashlib
from bootloader import image
from bootloader.api import VERSION as API
from bootloader.bootctl import slot_path

_CHUNK = 1024  # while the meter runs: its heap may have no larger piece free


def manifest(slot):
    """(manifest dict, image id) of the image in a slot, or (None, None) if it has none (or
    not a well-formed one)."""
    try:
        with open(slot_path(slot), "rb") as f:
            raw, _, _ = image.read_header(f)
        return image.parse_manifest(raw), hashlib.sha256(raw).digest()
    except (OSError, ValueError):
        return None, None


async def check(slot, board_name, floor, kind="firmware", chunk=_CHUNK):
    """Full check of a slot: header, board, kind, platform API, security version against the
    floor, size and payload hash. Returns (manifest, image id) or raises ValueError saying what
    is wrong. Yields to other tasks between chunks, so metering stays on time while it hashes."""
    buf = bytearray(chunk)
    try:
        with open(slot_path(slot), "rb") as f:
            raw, _, off = image.read_header(f)
            m = image.parse_manifest(raw)
            if m["board"] != board_name:
                raise ValueError("image is for board %s" % m["board"])
            if m["kind"] != kind:
                raise ValueError("image is a %s, not a %s" % (m["kind"], kind))
            if kind == "firmware" and m["api"] > API:
                raise ValueError("image needs platform API %d, this bootloader provides %d" % (m["api"], API))
            if image.below_floor(m, floor):
                raise ValueError("security version %d is below the floor %d" % (m["security_version"], floor))
            f.seek(0, 2)
            if f.tell() != off + m["payload_size"]:
                raise ValueError("slot holds %d bytes, image needs %d" % (f.tell(), off + m["payload_size"]))
            digest = await image.payload_sha256_async(f, off, m["payload_size"], buf)
            if digest.hex() != m["payload_sha256"]:
                raise ValueError("payload hash mismatch")
    except OSError:
        raise ValueError("slot %d is empty" % slot)
    return m, hashlib.sha256(raw).digest()
