# MicroPython freezing manifest for a Raspberry Pi Pico 2 build (BOARD=RPI_PICO2): the same rp2 port
# and the same bootloader as the Pico, so the same frozen modules.
include("../pico/manifest.py")
