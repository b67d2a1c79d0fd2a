# MicroPython freezing manifest: a Raspberry Pi Pico build that carries the meter's bootloader in
# its firmware, e.g. `make -C ports/rp2 BOARD=RPI_PICO FROZEN_MANIFEST=$PWD/boards/pico/manifest.py`.
# It freezes what bootloader/package.json installs (/main.py, the first stage, and the factory
# bootloader copy), compiled -O3 as provisioning compiles them. The first stage puts the copy it
# chooses ahead of the frozen modules on sys.path, so the frozen bootloader runs only where both
# filesystem copies are gone. The HAL is not frozen: it stays in /board/ on the filesystem
# beside board.json (README, "micropython-lib packages", says why).
import json

# A FROZEN_MANIFEST replaces the port's own: keep its modules (asyncio, which the application needs).
include("$(PORT_DIR)/boards/manifest.py")

with open("../../bootloader/package.json") as f:
    _paths = [path for path, _url in json.load(f)["urls"]]
module("main.py", base_path="../../bootloader", opt=3)
package("bootloader", files=[p[len("bl/a/bootloader/"):] for p in _paths if p.startswith("bl/a/bootloader/")],
        base_path="../..", opt=3)
