"""The emulated Pico's set-up: which firmware and boot ROM the rig runs, the emulator's
configuration (from boards/pico/board.json), and a Pico's whole flash, provisioned or blank."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import BOOTROM_ENV, BOOTROM_NAME, FIRMWARE_ENV, REPO, SimError


def default_firmware() -> Path | None:
    """The Pico firmware the rig uses when none is given: $PICO_FIRMWARE, else the one a
    developer's checkout finds beside it (../shared/rp2/)."""
    env = os.environ.get(FIRMWARE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    found = REPO.parent / "shared" / "rp2" / "RPI_PICO-v1.28.0.uf2"
    return found if found.is_file() else None


NO_FIRMWARE = ("no Pico firmware: download the RPI_PICO UF2 of MicroPython v1.28 from "
               "micropython.org and give it with --firmware PATH (or PICO_FIRMWARE=PATH), with the "
               f"RP2040 boot ROM ({BOOTROM_NAME}, from raspberrypi/pico-bootrom) beside it")


def _pico_config(firmware, bootrom, known: dict | None) -> dict:
    """What the emulator needs to know: the firmware and boot ROM files, the flash chip's size
    and timing, and where the board's RTC and front-end sit (from boards/pico/board.json)."""
    fw = Path(firmware).expanduser().resolve() if firmware else None
    if fw is None and known:
        fw = Path(known["firmware"])
    fw = fw or default_firmware()
    if fw is None or not fw.is_file():
        raise SimError(NO_FIRMWARE if fw is None else f"Pico firmware {fw} not found", 2)
    rom = Path(bootrom or os.environ.get(BOOTROM_ENV) or fw.parent / BOOTROM_NAME).expanduser().resolve()
    if not bootrom and not rom.is_file() and default_firmware() is not None:
        rom = default_firmware().parent / BOOTROM_NAME  # a meter UF2 made elsewhere: the stock one's
    if not rom.is_file() or rom.stat().st_size != 16384:
        raise SimError(f"no RP2040 boot ROM at {rom} (16 KiB, {BOOTROM_NAME}); give --bootrom PATH", 2)
    cfg = json.loads((REPO / "boards" / "pico" / "board.json").read_text())
    flash, rtc = cfg["flash"], cfg["rtc"]
    return {
        "firmware": str(fw), "bootrom": str(rom),
        "flash_bytes": flash["offset"] + flash["block_size"] * flash["block_count"],
        "erase_ms": flash["erase_ms"], "page_program_ms": flash["page_program_ms"],
        "rtc_i2c": rtc["i2c"], "rtc_addr": int(rtc["addr"], 16), "ade_cs": cfg["metrology"]["cs"],
    }


# The HAN co-processor the rig fits to a Pico meter (`--han ok|fail`), as /board/board.json's
# han_radio names it to the HAL (boards/pico/rp2hal.py): UART1 on GP4 (TX) and GP5 (RX), 115200
# 8N1, one text frame a line; the emulator relays UART1 to the rig's HAN medium.
HAN_RADIO = {"uart": 1, "tx": 4, "rx": 5, "baud": 115200, "rxbuf": 1024, "txbuf": 256, "line_bytes": 256}


def _provision_pico(flash: Path, pico: dict, image, keys, serial, defaults: dict, han_radio: bool = False) -> str | None:
    """The whole flash of a Pico. Without an image: a blank Pico with the UF2 dragged onto it,
    which may be the stock firmware alone (MicroPython formats the filesystem at its first boot:
    ready for `meterfw provision`) or a meter made by `meterfw uf2`. With an image: the firmware
    and the meter's filesystem, provisioned here with the board defaults given, and with the HAN
    co-processor in its board.json when `han_radio` (a board is wired once: a later start's
    --han does not rewire it)."""
    from meterfw.errors import CommandError
    from meterfw.provision import build_flash, default_serial, device_files
    from meterfw.uf2 import PAYLOAD_BYTES, board_spec, parse_uf2, pico_flash_image

    fw = Path(pico["firmware"]).read_bytes()
    try:
        if image is None:
            spec = board_spec("pico")
            data = bytearray(b"\xff" * spec["flash_bytes"])
            for offset, payload in parse_uf2(fw, spec["family"], spec["flash_bytes"]).items():
                data[offset:offset + PAYLOAD_BYTES] = payload
            flash.write_bytes(bytes(data))
            return serial
        if keys is None:
            raise SimError("give --keys with --image to provision a meter", 2)
        img = Path(image).read_bytes()
        serial = serial or default_serial(img, str(flash.resolve()))
        files = device_files(img, Path(keys), "pico", serial)
        board_json = json.loads(files["/board/board.json"])
        board_json["defaults"].update({k: v for k, v in defaults.items() if v is not None})
        if han_radio:
            board_json["han_radio"] = HAN_RADIO
        files["/board/board.json"] = json.dumps(board_json).encode()
        flash.write_bytes(pico_flash_image(fw, build_flash(files, "pico"), "pico"))
    except CommandError as e:
        raise SimError(str(e), 2) from None
    return serial
