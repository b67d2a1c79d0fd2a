"""Where the device sources live. The host package is installed from the repository, and the
device code (bootloader, boards, firmware) travels with it."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTLOADER = REPO / "bootloader"
FIRMWARE = REPO / "firmware"
BOARDS = REPO / "boards"
BOARD_NAMES = ("sim", "pico", "pico2")


def board_dir(board: str) -> Path:
    return BOARDS / board
