# Device side of the .mfw image format (see host_tools/meterfw/image.py for the layout): the
# manifest's fields and their checks, versions and the security floor, and the payload's hash in
# chunks. Loaded by the boot's selection and kept (dropping it left the heap too broken up for a
# verify after a reboot); reading a header and mounting a slot are slotfs.py's.
from micropython import const
import hashlib
import json
from bootloader.protocol import U32_MAX
from bootloader.slotfs import ImageVfs, read_header, read_table  # noqa: F401 - the format's readers

# A manifest's fields and their kinds, as host_tools' image.py writes them: "v" a version X.Y.Z,
# "u" an integer 0..2^32-1 (what boot control and the slot store), "h" 64 hex digits, "n" a
# module name, "k" an image kind, "s" any string.
_FIELDS = (("format", "u"), ("board", "s"), ("version", "v"), ("security_version", "u"),
           ("payload_size", "u"), ("payload_sha256", "h"), ("min_bootloader", "v"), ("entry", "n"),
           ("build_time", "u"), ("mpy", "s"), ("kind", "k"), ("api", "u"))
KINDS = ("firmware", "bootloader")

ROLE_VENDOR = const(1)
ROLE_UTILITY = const(2)


def version_tuple(v):
    return tuple(int(x) for x in v.split("."))


def below_floor(m, floor):
    """An image no path may run (anti-rollback): its security version is below the floor."""
    return m["security_version"] < floor


def _ok(kind, v):
    if kind == "u":
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U32_MAX
    if not isinstance(v, str) or not v or len(v) > 64:
        return False
    if kind == "k":
        return v in KINDS
    if kind == "v":
        parts = v.split(".")
        return len(parts) == 3 and all(p and len(p) < 6 and p.isdigit() for p in parts)
    if kind == "h":
        return len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    if kind == "n":
        return not v[0].isdigit() and all(c == "_" or c.isalpha() or c.isdigit() for c in v)
    return True


def parse_manifest(raw):
    """The manifest dict from its bytes, every field of the kind the format says; ValueError
    otherwise, whatever the bytes (from a slot or from the wire): no reader of a manifest meets
    a missing key or a value of the wrong type."""
    try:
        m = json.loads(raw)
    except Exception:  # not JSON, not UTF-8, or nested past the parser's depth
        raise ValueError("bad image: manifest is not JSON")
    if not isinstance(m, dict):
        raise ValueError("bad image: manifest is not a JSON object")
    for key, kind in _FIELDS:
        if not _ok(kind, m.get(key)):
            raise ValueError("bad image: manifest field %s is missing or malformed" % key)
    return m


def _hash_chunk(f, h, mv, left):
    # Slicing a memoryview allocates, so only the final short chunk pays for it.
    n = f.readinto(mv if left >= len(mv) else mv[:left])
    if not n:
        raise ValueError("bad image: truncated payload")
    h.update(mv if n == len(mv) else mv[:n])
    return left - n


def payload_sha256(f, payload_off, size, buf):
    # buf is the caller's preallocated bytearray, so hashing a whole slot allocates nothing per chunk.
    if not len(buf):
        raise ValueError("empty buffer")
    h = hashlib.sha256()
    mv = memoryview(buf)
    f.seek(payload_off)
    while size:
        size = _hash_chunk(f, h, mv, size)
    return h.digest()


async def payload_sha256_async(f, payload_off, size, buf):
    # Yields between chunks so interval closing keeps its deadline while a slot is verified.
    import asyncio  # imported here: the boot path verifies synchronously and needn't load asyncio

    if not len(buf):
        raise ValueError("empty buffer")
    h = hashlib.sha256()
    mv = memoryview(buf)
    done = 0
    while done < size:
        f.seek(payload_off + done)  # another task may have moved the file position while we slept
        done = size - _hash_chunk(f, h, mv, size - done)
        await asyncio.sleep_ms(0)
    return h.digest()
