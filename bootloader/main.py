# /main.py on the device: start the bootloader with this board's HAL.
from board.hal import Board
from bootloader.boot import start

start(Board())
