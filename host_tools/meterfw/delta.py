"""Delta updates (.mfd): a new image described, block by block, against the image a meter runs.

A meter's transfer writes an image into its inactive slot a block at a time. A delta sends, for
each block, its recipe instead of its bytes: ranges the meter copies from the image in its active
slot (the base, named by its image id), and the rest as literal bytes, packed with raw deflate
where that pays. The meter expands each recipe into the block it describes and hands that to its
transfer as if it had come whole (firmware/delta.py), so what it writes, verifies (the payload's
hash against the signed manifest, whose signatures the initiate checks as for any image),
activates and reverts is the full image, byte for byte, and the image in the active slot is only
read. A recipe stands for one block, so a delta resumes wherever the meter's transfer stands.

Which ranges to copy is found by matching the new image's bytes against the base's (a greedy
match of 16-byte runs, extended both ways): a module that did not change is one range of the
base, a changed one keeps what it shares with its old version, and the rest goes as literals.

Layout (little-endian):
  0   4   magic b"MFD1"
  4  32   base image id (SHA-256 of the base image's manifest)
 36   4   block size the recipes are cut for (the meter's transfer block)
 40   4   head length H
 44   H   the new image's head: header, manifest and signatures (what the initiate carries)
          then, per block of the new image: u16 recipe length, recipe

Recipe: u16 literal bytes L, u16 packed length Z (0: the L literal bytes follow as they are;
else Z bytes of raw deflate with a 2 KiB window that expand to them), then ops to its end:
b"C" u32 offset u16 length (bytes of the base image file), b"L" u16 length (the next literals).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .image import Image, ImageError, parse_head, read_bytes

MAGIC = b"MFD1"
BLOCK_SIZE = 2048  # the meter's transfer block (bootloader/transfer.py)
WBITS = 11  # deflate window: 2 KiB, a whole block, so a block's literals lose nothing to it
_HEAD = struct.Struct("<4s32sII")
_COPY = struct.Struct("<cIH")
_LIT = struct.Struct("<cH")
_RUN = 16  # bytes that must match before a copy is considered
_MIN_COPY = 24  # shorter matches cost less as literals than as an op
_CANDIDATES = 8  # base offsets kept per 16-byte run: the longest match among them wins
# Bytes a block costs on the wire beyond its body: frame type, seq and CRC, block number, the
# session trailer, SLIP ends and escapes (bootloader/transfer.py counts the same).
WIRE_EXTRA = 48


@dataclass(frozen=True)
class Delta:
    base_id: bytes
    block_size: int
    head: bytes  # the new image's head, as an initiate carries it
    recipes: list  # one per block of the new image
    target: Image  # the new image's head parsed: manifest, image id (no payload)
    size: int  # the new image's bytes, as its slot holds them

    @property
    def image_id(self) -> bytes:
        return self.target.image_id

    @property
    def manifest(self) -> dict:
        return self.target.manifest

    def body(self, n: int) -> bytes:
        return self.recipes[n]

    def wire_bytes(self) -> int:
        """Bytes its blocks cost on the line (the initiate aside)."""
        return sum(len(r) + WIRE_EXTRA for r in self.recipes)

    def encode(self) -> bytes:
        out = bytearray(_HEAD.pack(MAGIC, self.base_id, self.block_size, len(self.head)) + self.head)
        for r in self.recipes:
            out += struct.pack("<H", len(r)) + r
        return bytes(out)

    @staticmethod
    def read(path: Path) -> Delta:
        return parse_delta(read_bytes(path, "delta"))


def full_wire_bytes(img: Image, block_size: int = BLOCK_SIZE) -> int:
    """Bytes a full image's blocks cost on the line."""
    blocks = (len(img.data) + block_size - 1) // block_size
    return len(img.data) + blocks * WIRE_EXTRA


def is_delta(data: bytes) -> bool:
    return data[:4] == MAGIC


def parse_delta(data: bytes) -> Delta:
    """The Delta these bytes hold; ImageError saying what is wrong with them otherwise."""
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise ImageError("not a delta: wrong magic or truncated header")
    _, base_id, block_size, head_len = _HEAD.unpack_from(data)
    if not 0 < block_size <= 0xFFFF:
        raise ImageError(f"bad delta: block size {block_size}")
    head = data[_HEAD.size:_HEAD.size + head_len]
    if len(head) != head_len:
        raise ImageError("bad delta: truncated head")
    target = parse_head(head)
    if target.manifest["kind"] != "firmware":
        raise ImageError(f"bad delta: it makes a {target.manifest['kind']} image; deltas are for firmware")
    size = len(head) + target.manifest["payload_size"]
    blocks = (size + block_size - 1) // block_size
    cut, pos = [], _HEAD.size + head_len
    for n in range(blocks):
        if pos + 2 > len(data):
            raise ImageError(f"bad delta: truncated at block {n} of {blocks}")
        (k,) = struct.unpack_from("<H", data, pos)
        recipe = data[pos + 2:pos + 2 + k]
        if len(recipe) != k:
            raise ImageError(f"bad delta: block {n}'s recipe is truncated")
        cut.append(recipe)
        pos += 2 + k
    if pos != len(data):
        raise ImageError(f"bad delta: {len(data) - pos} bytes after the last block")
    return Delta(base_id, block_size, head, cut, target, size)


def _index(base: bytes) -> dict:
    index: dict[bytes, list] = {}
    for i in range(len(base) - _RUN + 1):
        offsets = index.setdefault(base[i:i + _RUN], [])
        if len(offsets) < _CANDIDATES:
            offsets.append(i)
    return index


def _ops(base: bytes, new: bytes) -> list:
    """[(base offset, length) for a copy, or (None, bytes) for literals] that make `new`."""
    index = _index(base)
    ops: list = []
    lit = bytearray()
    j = 0
    while j < len(new):
        best_i = best_len = 0
        for i in index.get(new[j:j + _RUN], ()):
            n = _RUN
            while j + n < len(new) and i + n < len(base) and new[j + n] == base[i + n]:
                n += 1
            if n > best_len:
                best_i, best_len = i, n
        if best_len < _MIN_COPY:
            lit.append(new[j])
            j += 1
            continue
        back = 0  # the match may start earlier, in bytes taken as literals so far
        while back < len(lit) and best_i - back > 0 and lit[-1 - back] == base[best_i - back - 1]:
            back += 1
        if back:
            del lit[-back:]
        if lit:
            ops.append((None, bytes(lit)))
            lit = bytearray()
        ops.append((best_i - back, best_len + back))
        j += best_len
    if lit:
        ops.append((None, bytes(lit)))
    return ops


def recipes(base: bytes, new: bytes, block_size: int = BLOCK_SIZE) -> list:
    """The recipe of each block of `new`, against the image file `base`."""
    return _cut(_ops(base, new), len(new), block_size)


def _cut(ops: list, size: int, block_size: int) -> list:
    """The ops cut at block borders, each block's as one recipe."""
    out = []
    pending = list(reversed(ops))
    for start in range(0, size, block_size):
        want = min(block_size, size - start)
        lits, body = bytearray(), bytearray()
        while want:
            src, what = pending.pop()
            n = min(want, what if src is not None else len(what))
            if src is None:
                lits += what[:n]
                body += _LIT.pack(b"L", n)
                if n < len(what):
                    pending.append((None, what[n:]))
            else:
                body += _COPY.pack(b"C", src, n)
                if n < what:
                    pending.append((src + n, what - n))
            want -= n
        packed = b""
        if lits:
            c = zlib.compressobj(9, zlib.DEFLATED, -WBITS)
            packed = c.compress(bytes(lits)) + c.flush()
            if len(packed) >= len(lits):
                packed = b""  # does not pay: the literals go as they are
        out.append(struct.pack("<HH", len(lits), len(packed)) + (packed or bytes(lits)) + bytes(body))
    return out


def build(base: Image, new: Image, block_size: int = BLOCK_SIZE) -> Delta:
    """The delta that turns the meter running `base` into one holding `new` in its other slot."""
    if base.manifest["board"] != new.manifest["board"]:
        raise ImageError(f"the images are for different boards: {base.manifest['board']} and {new.manifest['board']}")
    if base.image_id == new.image_id:
        raise ImageError("the two images are the same image")
    if "firmware" != new.manifest["kind"] or "firmware" != base.manifest["kind"]:
        raise ImageError("deltas are for firmware images: a bootloader image goes whole")
    return Delta(base.image_id, block_size, new.head, recipes(base.data, new.data, block_size), parse_head(new.head),
                 new.size)


def apply(base: bytes, delta: Delta) -> bytes:
    """The image a delta makes from the base image's bytes, as the meter makes it (for tests
    and for `image delta`, which checks what it wrote)."""
    out = bytearray()
    for recipe in delta.recipes:
        lit_len, packed_len = struct.unpack_from("<HH", recipe)
        pos = 4 + (packed_len or lit_len)
        lits = zlib.decompress(recipe[4:pos], -WBITS) if packed_len else recipe[4:pos]
        taken = 0
        while pos < len(recipe):
            if recipe[pos:pos + 1] == b"C":
                _, src, n = _COPY.unpack_from(recipe, pos)
                out += base[src:src + n]
                pos += _COPY.size
            else:
                _, n = _LIT.unpack_from(recipe, pos)
                out += lits[taken:taken + n]
                taken += n
                pos += _LIT.size
    return bytes(out)
