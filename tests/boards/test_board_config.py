"""Every board's board.json describes a transfer window the transfer can use: whole erase sectors
(a window is written sector by sector, nothing half-erased), whole transfer blocks, and RAM the
board's heap can spare while a download runs."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOARDS = sorted(p.parent.name for p in (REPO / "boards").glob("*/board.json"))
BLOCK_SIZE = int(re.search(r"^BLOCK_SIZE = const\((\d+)\)", (REPO / "bootloader" / "transfer.py").read_text(), re.M)[1])


@pytest.mark.parametrize("board", BOARDS)
def test_transfer_window_is_whole_sectors_and_blocks_within_the_heap(board):
    cfg = json.loads((REPO / "boards" / board / "board.json").read_text())
    window = cfg["transfer_window_bytes"]
    assert window > 0
    assert window % cfg["flash"]["block_size"] == 0
    assert window % BLOCK_SIZE == 0
    assert window <= cfg["heap_bytes"] // 10


def test_every_board_is_checked():
    assert {"sim", "pico", "pico2"} <= set(BOARDS)
