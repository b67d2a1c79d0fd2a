# What the bootloader knows about the two slot files: their manifests and whether they verify.
import asyncio
import json
import hashlib
from bootloader import image
from bootloader.bootctl import slot_path

_CHUNK = 1024


def manifest(slot):
    """(manifest dict, image id) of the image in a slot, or (None, None) if it has none."""
    try:
        with open(slot_path(slot), "rb") as f:
            raw, _, _ = image.read_header(f)
    except (OSError, ValueError):
        return None, None
    return json.loads(raw), hashlib.sha256(raw).digest()


def check(slot, board_name):
    """Full check of a slot: header, board, size and payload hash.

    Returns (manifest, image id) or raises ValueError saying what is wrong.
    """
    return asyncio.run(check_async(slot, board_name))


async def check_async(slot, board_name):
    """Yields to other tasks between chunks, so metering stays on time while it hashes."""
    buf = bytearray(_CHUNK)
    try:
        with open(slot_path(slot), "rb") as f:
            raw, _, off = image.read_header(f)
            m = json.loads(raw)
            if m.get("board") != board_name:
                raise ValueError("image is for board %s" % m.get("board"))
            f.seek(0, 2)
            if f.tell() != off + m["payload_size"]:
                raise ValueError("slot holds %d bytes, image needs %d" % (f.tell(), off + m["payload_size"]))
            digest = await image.payload_sha256_async(f, off, m["payload_size"], buf)
            if digest.hex() != m["payload_sha256"]:
                raise ValueError("payload hash mismatch")
    except OSError:
        raise ValueError("slot %d is empty" % slot)
    return m, hashlib.sha256(raw).digest()


_PREFIX = {1: b"meterfw-vendor\x00", 2: b"meterfw-utility\x00"}
_ROLE_NAME = {1: "vendor", 2: "utility"}


def _public_key(role):
    try:
        with open("/keys/%s.pub" % _ROLE_NAME[role], "rb") as f:
            return f.read()
    except OSError:
        return None


async def check_signatures(slot, require_approval):
    """Ed25519 checks of a slot's manifest against the meter's public keys (vendor, and the
    utility's approval when required). Raises ValueError naming the first failure."""
    with open(slot_path(slot), "rb") as f:
        raw, sigs, _ = image.read_header(f)
    await check_header_signatures(raw, sigs, require_approval)


async def check_header_signatures(raw, sigs, require_approval):
    """check_signatures on a manifest and signatures already read (an initiate's image head)."""
    # Loaded for the check and forgotten after (it loads SHA-512, then the curve arithmetic,
    # one at a time): ~16 KB of heap at its peak, needed only for a signature check.
    from bootloader import ed25519, forget

    try:
        found = {}
        for role, key_id, sig in sigs:
            if role not in _PREFIX:
                continue
            pub = _public_key(role)
            if pub is None or hashlib.sha256(pub).digest()[:8] != key_id:
                if role == 1:
                    raise ValueError("vendor signature is by an unknown key")
                continue
            if not await ed25519.verify_async(pub, _PREFIX[role] + raw, sig):
                raise ValueError("bad %s signature" % _ROLE_NAME[role])
            found[role] = True
    finally:
        del ed25519
        forget("ed25519")
    if 1 not in found:
        raise ValueError("no vendor signature")
    if require_approval and 2 not in found:
        raise ValueError("no valid utility approval, and this meter requires one")
