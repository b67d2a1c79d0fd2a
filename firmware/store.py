# Small persisted records: body + CRC-32, replaced whole. The new record is written to PATH.new
# and renamed over PATH, so a power cut at any write leaves either the old record or the new
# one, never a mix; a reader that finds PATH damaged falls back to a whole PATH.new.
import os
import struct
from binascii import crc32


def save(path, body):
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(body)
        f.write(struct.pack("<I", crc32(body)))
    os.rename(tmp, path)


def _read(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if len(raw) < 4 or struct.unpack_from("<I", raw, len(raw) - 4)[0] != crc32(memoryview(raw)[:-4]):
        return False
    return raw[:-4]


def load(path):
    """(body, status): status is "ok", "new" (only the unrenamed copy was whole), "missing",
    or "damaged" (something is there but nothing whole; body is None)."""
    body = _read(path)
    if body:
        return body, "ok"
    new = _read(path + ".new")
    if new:
        return new, "new"
    return None, "missing" if body is None and new is None else "damaged"


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
