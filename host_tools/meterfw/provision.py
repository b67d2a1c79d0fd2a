"""Lay out a factory-fresh device filesystem, as flashing a board does: bootloader, board
files, public keys, the meter's identity and one image as the confirmed slot.

The result is a littlefs image with the Pico's geometry; the simulated board boots it as it
is, and the same bytes go into a UF2 for a real Pico.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from littlefs import LittleFS

from .auth import meter_key
from .errors import CommandError
from .image import ImageError, _compile, parse_image
from .keys import load_keys
from .paths import BOOTLOADER, board_dir

# VfsLfs2's defaults on MicroPython: images made here must mount there unchanged.
LFS_CONFIG = dict(read_size=32, prog_size=32, lookahead_size=32)


# The board's HAL modules that go to /board/ (pico2 shares the rp2 code of pico).
HAL_SOURCES = {
    "sim": [board_dir("sim") / "hal.py"],
    "pico": [board_dir("pico") / "hal.py", board_dir("pico") / "rp2hal.py"],
    "pico2": [board_dir("pico2") / "hal.py", board_dir("pico") / "rp2hal.py"],
}


def flash_geometry(board: str) -> dict:
    return json.loads((board_dir(board) / "board.json").read_text())["flash"]


def device_files(image: bytes, keys_dir: Path, board: str, serial: str) -> dict[str, bytes]:
    """Every file of a fresh device, by absolute device path."""
    try:
        img = parse_image(image)
    except ImageError as e:
        raise CommandError(f"cannot provision: {e}") from None
    if img.manifest["board"] != board:
        raise CommandError(f"cannot provision: image is for board {img.manifest['board']}, not {board}")
    keys = load_keys(keys_dir, private=False)
    files = {"/main.py": (BOOTLOADER / "main.py").read_bytes()}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(BOOTLOADER.glob("*.py")):
            if src.name != "main.py":
                files[f"/bootloader/{src.stem}.mpy"] = _compile(src, f"bootloader/{src.stem}.mpy", Path(tmp))
        for src in HAL_SOURCES[board]:
            files[f"/board/{src.stem}.mpy"] = _compile(src, f"board/{src.stem}.mpy", Path(tmp))
    files["/board/board.json"] = (board_dir(board) / "board.json").read_bytes()
    files["/keys/vendor.pub"] = keys.vendor_public_raw
    if keys.utility_public_raw:
        files["/keys/utility.pub"] = keys.utility_public_raw
    if keys.utility_secret is None:
        raise CommandError(f"cannot provision: {keys_dir} has no utility.secret to derive the meter key from")
    files["/keys/meter.key"] = meter_key(keys.utility_secret, serial)
    files["/identity.json"] = json.dumps({"serial": serial, "board": board}).encode()
    files["/slots/a.mfw"] = image
    return files


def default_serial(image: bytes, seed: str) -> str:
    return "MF" + hashlib.sha256(seed.encode()).hexdigest()[:10].upper()


def device_dirs(files: dict[str, bytes]) -> list[str]:
    """The directories a fresh device has, parents first: those of its files, and the empty
    /data and /boot the meter fills."""
    dirs = {"/data", "/boot"}
    for path in files:
        parts = path.split("/")[1:-1]
        dirs.update("/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return sorted(dirs)


def build_flash(files: dict[str, bytes], board: str) -> bytes:
    geo = flash_geometry(board)
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], **LFS_CONFIG)
    for d in device_dirs(files):
        fs.mkdir(d)
    for path, data in files.items():
        with fs.open(path, "wb") as f:
            f.write(data)
    return bytes(fs.context.buffer)


def read_fs(fs_bytes: bytes, board: str) -> tuple[dict[str, bytes], list[str]]:
    """Every file of a littlefs image with the board's geometry, and its directories."""
    geo = flash_geometry(board)
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], mount=False, **LFS_CONFIG)
    fs.context.buffer = bytearray(fs_bytes)
    fs.mount()
    files, dirs = {}, []
    for root, subdirs, names in fs.walk("/"):
        root = root.rstrip("/")
        dirs += [f"{root}/{d}" for d in subdirs]
        for name in names:
            with fs.open(f"{root}/{name}", "rb") as f:
                files[f"{root}/{name}"] = f.read()
    fs.unmount()
    return files, sorted(dirs)


def provision(flash_path: Path, image: bytes, keys_dir: Path, board: str = "sim",
              serial: str | None = None) -> dict:
    serial = serial or default_serial(image, str(flash_path.resolve()))
    flash = build_flash(device_files(image, keys_dir, board, serial), board)
    flash_path.write_bytes(flash)
    return {"serial": serial, "board": board, "flash_bytes": len(flash)}
