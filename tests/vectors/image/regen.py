"""Rebuild tiny.mfw and tiny.manifest.json from src/ and the test-only keys/.

Only after a deliberate format or mpy-cross change: tests check that a fresh build is
byte-identical to the checked-in vector. Run: .venv/bin/python tests/vectors/image/regen.py
"""

from pathlib import Path

from meterfw.image import build_image, parse_image, write_image
from meterfw.keys import load_keys

HERE = Path(__file__).resolve().parent
BUILD = dict(board="sim", version="1.0.0", security_version=1, min_bootloader="0.1.0", build_time=1767225600,
             api=1)


def build() -> bytes:
    return build_image(HERE / "src", keys=load_keys(HERE / "keys"), **BUILD)


if __name__ == "__main__":
    data = build()
    write_image(HERE / "tiny.mfw", data)
    (HERE / "tiny.manifest.json").write_bytes(parse_image(data).manifest_bytes)
    print(f"tiny.mfw: {len(data)} bytes")
