"""Open a (stopped) board's flash image as a filesystem from the host, for fault injection:
corrupt a boot-control copy, damage a slot, inspect files. Uses the same littlefs geometry as
provisioning, so what the meter wrote reads back byte for byte."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from littlefs import LittleFS

from meterfw.provision import LFS_CONFIG, flash_geometry


@contextmanager
def mounted(flash_path: Path, board: str = "sim", write: bool = True):
    geo = flash_geometry(board)
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], mount=False, **LFS_CONFIG)
    fs.context.buffer = bytearray(Path(flash_path).read_bytes())
    fs.mount()
    yield fs
    fs.unmount()
    if write:
        Path(flash_path).write_bytes(bytes(fs.context.buffer))


def read_file(flash_path: Path, path: str) -> bytes:
    with mounted(flash_path, write=False) as fs, fs.open(path, "rb") as f:
        return f.read()


def write_file(flash_path: Path, path: str, data: bytes) -> None:
    with mounted(flash_path) as fs, fs.open(path, "wb") as f:
        f.write(data)
