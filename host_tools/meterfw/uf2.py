"""UF2 files for a Pico: the stock MicroPython firmware and a meter's filesystem in one file.

A UF2 is a run of 512-byte blocks, each carrying up to 476 bytes for one target address; the
RP2040's BOOTSEL loader takes 256-byte payloads only, at 256-byte aligned flash addresses. The
loader erases every 4 KiB sector it writes to and leaves every other sector as it was, so the
whole filesystem region goes into the file, erased blocks included: a Pico that held another
filesystem gets exactly this one, not a mix that littlefs would try to mount.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import CommandError
from .image import Image
from .provision import build_flash, default_serial, device_files, flash_geometry

MAGIC0 = 0x0A324655
MAGIC1 = 0x9E5D5157
MAGIC_END = 0x0AB16F30
FLAG_NOT_MAIN_FLASH = 0x00000001
FLAG_FAMILY_ID = 0x00002000
BLOCK_BYTES = 512
PAYLOAD_BYTES = 256
FLASH_BASE = 0x10000000  # where the RP2040 maps flash (XIP)
_HEADER = struct.Struct("<8I")  # magic0, magic1, flags, address, size, block no, blocks, family
_END = struct.Struct("<I")

# The boards a UF2 can be made for. The RP2350 (pico2) is left out until its UF2s can be tested
# here: its loader takes other families (ARM-S, RISC-V) and picotool adds an "absolute" block
# for erratum E10, which this parser would have to accept and pass on.
PICO_BOARDS = {
    "pico": {"family": 0xE48BFF56, "chip": "RP2040", "flash_bytes": 2 * 1024 * 1024},
}


def board_spec(board: str) -> dict:
    """The board's family, flash size and filesystem region (offset and size, from board.json)."""
    spec = PICO_BOARDS.get(board)
    if spec is None:
        if board == "pico2":
            raise CommandError("UF2 files for pico2 (RP2350) are not supported yet: its families and "
                               "erratum block are untested here; provision it with `meterfw provision`")
        raise CommandError(f"board {board} has no UF2 loader; UF2 files are for {', '.join(PICO_BOARDS)}")
    geo = flash_geometry(board)
    fs_bytes = geo["block_size"] * geo["block_count"]
    return {**spec, "fs_offset": geo["offset"], "fs_bytes": fs_bytes}


def parse_uf2(data: bytes, family: int, flash_bytes: int, what: str = "UF2") -> dict[int, bytes]:
    """{flash offset: 256-byte payload} of every main-flash block, each checked: magics, family,
    payload size and alignment, in flash, no block twice, and every block of the file present."""
    if not data or len(data) % BLOCK_BYTES:
        if len(data) > BLOCK_BYTES and _is_block(data, 0):
            raise CommandError(f"{what} is truncated: {len(data)} bytes is not a whole number of 512-byte blocks")
        raise CommandError(f"{what} is not a UF2 file")
    pages: dict[int, bytes] = {}
    seen: set[int] = set()
    total = None
    for i in range(len(data) // BLOCK_BYTES):
        if not _is_block(data, i):
            raise CommandError(f"{what} is not a UF2 file (block {i} has no UF2 magic)")
        _, _, flags, address, size, block_no, blocks, fam = _HEADER.unpack_from(data, i * BLOCK_BYTES)
        if total is None:
            total = blocks
        if blocks != total or block_no >= blocks or block_no in seen:
            raise CommandError(f"{what}: block {i} is numbered {block_no} of {blocks}, in a file of {total} blocks")
        seen.add(block_no)
        if flags & FLAG_NOT_MAIN_FLASH:
            continue
        if not flags & FLAG_FAMILY_ID or fam != family:
            got = f"family 0x{fam:08x}" if flags & FLAG_FAMILY_ID else "no family id"
            raise CommandError(f"{what} is for another chip: {got}, not 0x{family:08x}")
        if size != PAYLOAD_BYTES or address % PAYLOAD_BYTES:
            raise CommandError(f"{what}: block {i} carries {size} bytes at 0x{address:08x}; "
                               f"the loader takes {PAYLOAD_BYTES} at {PAYLOAD_BYTES}-byte boundaries")
        offset = address - FLASH_BASE
        if not 0 <= offset <= flash_bytes - PAYLOAD_BYTES:
            raise CommandError(f"{what}: block {i} targets 0x{address:08x}, outside the "
                               f"{flash_bytes // 1024} KiB flash at 0x{FLASH_BASE:08x}")
        if offset in pages:
            raise CommandError(f"{what}: block {i} writes 0x{address:08x} again")
        start = i * BLOCK_BYTES + _HEADER.size
        pages[offset] = bytes(data[start:start + PAYLOAD_BYTES])
    if len(seen) != total:
        raise CommandError(f"{what} is truncated: {len(seen)} of its {total} blocks")
    if not pages:
        raise CommandError(f"{what} holds nothing for the flash")
    return pages


def _is_block(data: bytes, i: int) -> bool:
    head = _HEADER.unpack_from(data, i * BLOCK_BYTES)
    return (head[0], head[1]) == (MAGIC0, MAGIC1) and \
        _END.unpack_from(data, (i + 1) * BLOCK_BYTES - _END.size)[0] == MAGIC_END


def write_uf2(regions: dict[int, bytes], family: int) -> bytes:
    """A UF2 of {flash offset: bytes}; each region starts page-aligned and its last page is
    padded with 0xFF (erased flash)."""
    pages: list[tuple[int, bytes]] = []
    end = 0
    for offset in sorted(regions):
        data = regions[offset]
        if offset % PAYLOAD_BYTES or offset < end:
            raise ValueError(f"region at 0x{offset:x} is not page-aligned or overlaps the one before")
        for p in range(0, len(data), PAYLOAD_BYTES):
            pages.append((offset + p, data[p:p + PAYLOAD_BYTES].ljust(PAYLOAD_BYTES, b"\xff")))
        end = offset + len(data)
    out = bytearray()
    for n, (offset, payload) in enumerate(pages):
        out += _HEADER.pack(MAGIC0, MAGIC1, FLAG_FAMILY_ID, FLASH_BASE + offset, PAYLOAD_BYTES, n, len(pages), family)
        out += payload.ljust(BLOCK_BYTES - _HEADER.size - _END.size, b"\0")
        out += _END.pack(MAGIC_END)
    return bytes(out)


def firmware_pages(firmware_uf2: bytes, board: str) -> dict[int, bytes]:
    """The firmware's pages, which must all lie below the board's filesystem region."""
    spec = board_spec(board)
    pages = parse_uf2(firmware_uf2, spec["family"], spec["flash_bytes"], "firmware")
    top = max(pages)
    if top + PAYLOAD_BYTES > spec["fs_offset"]:
        raise CommandError(f"firmware reaches 0x{FLASH_BASE + top + PAYLOAD_BYTES:08x}, into the filesystem "
                           f"region at 0x{FLASH_BASE + spec['fs_offset']:08x}: not a MicroPython build for {board}")
    return pages


def _check_fs(fs: bytes, spec: dict) -> None:
    if len(fs) != spec["fs_bytes"]:
        raise CommandError(f"filesystem is {len(fs)} bytes; the region is {spec['fs_bytes']}")


def meter_uf2(firmware_uf2: bytes, fs: bytes, board: str) -> tuple[bytes, dict]:
    """One UF2 with the firmware's pages and the whole filesystem region, and its figures."""
    spec = board_spec(board)
    pages = firmware_pages(firmware_uf2, board)
    _check_fs(fs, spec)
    out = write_uf2({**pages, spec["fs_offset"]: fs}, spec["family"])
    return out, {"firmware_bytes": len(pages) * PAYLOAD_BYTES, "fs_bytes": len(fs),
                 "uf2_bytes": len(out), "blocks": len(out) // BLOCK_BYTES}


def pico_flash_image(firmware_uf2: bytes, fs: bytes | None, board: str = "pico") -> bytes:
    """The whole flash of a Pico after loading this firmware and filesystem: the firmware's pages
    where it puts them, the filesystem at its offset, erased (0xFF) everywhere else. `fs=None`
    leaves the filesystem region erased, so the firmware formats it at its first boot."""
    spec = board_spec(board)
    flash = bytearray(b"\xff" * spec["flash_bytes"])
    for offset, payload in firmware_pages(firmware_uf2, board).items():
        flash[offset:offset + PAYLOAD_BYTES] = payload
    if fs is not None:
        _check_fs(fs, spec)
        flash[spec["fs_offset"]:spec["fs_offset"] + len(fs)] = fs
    return bytes(flash)


def write_meter_uf2(firmware_uf2: bytes, image: Image | bytes, keys_dir: Path, board: str, output: Path,
                    serial: str | None = None) -> dict:
    """Provision a meter into one UF2 file at `output`: the firmware, then the filesystem that
    `provision.build_flash` lays out. Nothing is written unless every check passes."""
    output = Path(output)
    firmware_pages(firmware_uf2, board)  # a bad firmware is refused before the files are compiled
    serial = serial or default_serial(image, str(output.resolve()))
    fs = build_flash(device_files(image, keys_dir, board, serial), board)
    data, figures = meter_uf2(firmware_uf2, fs, board)
    tmp = output.with_name(output.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CommandError(f"cannot write {output}: {e.strerror}") from None
    return {"output": str(output), "board": board, "serial": serial, **figures}
