# Board HAL for the Raspberry Pi Pico (RP2040, MicroPython board RPI_PICO). All of the rp2 code
# is shared with the Pico 2 in rp2hal.py (copied to /board/rp2hal.mpy); pins, geometry and heap
# are in board.json.
from board import rp2hal


class Board(rp2hal.Board):
    name = "pico"
    wdt_hw_max_ms = 8388  # 24-bit counter ticking twice per us (RP2040-E1)
