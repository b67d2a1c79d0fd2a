# Board HAL for the Raspberry Pi Pico 2 (RP2350, MicroPython board RPI_PICO2): the rp2 HAL of
# boards/pico/rp2hal.py (copied to /board/rp2hal.mpy) with the RP2350's limits. Its 3 MiB
# filesystem and larger heap are data, in board.json.
from board import rp2hal


class Board(rp2hal.Board):
    name = "pico2"
    wdt_hw_max_ms = 16777  # the RP2350 fixed the double tick: the full 24-bit us counter
