"""`meterfw provision` over the REPL of a Pico running the stock firmware, here the rig's emulated
Pico (sim_factory, board="pico") with its USB CDC port on a pty, checked on the flash the emulator
writes through: the files land byte for byte, a board with a meter is left alone, and --wipe
clears only the meter's own files."""
import json

import pytest
from littlefs import LittleFS

from meterfw.cli import main
from meterfw.errors import CommandError
from meterfw.provision import LFS_CONFIG, device_files, flash_geometry, provision_repl, read_fs
from meterfw.uf2 import pico_flash_image

FS_OFFSET = flash_geometry("pico")["offset"]

pytestmark = pytest.mark.timeout(900)


def stock_pico(sim_factory, pico_dut, fs: bytes | None = None):
    """An emulated Pico with stock MicroPython and the given filesystem (None: erased, as the
    stock UF2 dragged onto a blank chip leaves it)."""
    if fs is None:
        return sim_factory(board="pico", firmware=pico_dut.firmware)
    d = sim_factory.new_dir()
    (d / "flash.img").write_bytes(pico_flash_image(pico_dut.firmware.read_bytes(), fs))
    return sim_factory(dir=d, board="pico", firmware=pico_dut.firmware)


def flash_after_reset(board) -> bytes:
    """The flash as provisioning left it, once the chip has asked for its reset (not a watchdog)
    and the supervisor has booted it again. The board is stopped at once: the meter's first boot
    writes its own files only seconds later."""
    st = board.wait_boots(2, timeout=60)
    board.stop()
    log = board.supervisor_log()
    assert st["last_cause"] == "reset" and "device requested reset" in log, log[-2000:]
    return (board.dir / "flash.img").read_bytes()


def test_provision_fresh_pico_over_its_repl(sim_factory, pico_dut, capsys, images, keys_dir):
    board = stock_pico(sim_factory, pico_dut)
    code = main(["provision", "--port", board.usb_port, "--board", "pico", "--image", str(images["pico"]),
                 "--keys", str(keys_dir), "--serial", "MF0001", "--json"])
    captured = capsys.readouterr()
    assert (code, captured.err) == (0, ""), captured.err
    flash = flash_after_reset(board)
    report = json.loads(captured.out)
    expected = device_files(images["pico"].read_bytes(), keys_dir, "pico", "MF0001")
    assert report["verified"] is True and report["seconds"] > 0
    assert {k: report[k] for k in ("port", "board", "serial", "files", "bytes")} == {
        "port": board.usb_port, "board": "pico", "serial": "MF0001", "files": len(expected),
        "bytes": sum(map(len, expected.values()))}
    files, dirs = read_fs(flash[FS_OFFSET:], "pico")
    assert files == expected
    assert {"/data", "/boot", "/slots", "/bl", "/bl/a", "/bl/a/bootloader", "/board", "/keys"} <= set(dirs)


def _old_meter_fs() -> bytes:
    """A filesystem with an old meter's data and slot, no /main.py (so the REPL is free), and a
    file of the owner's."""
    geo = flash_geometry("pico")
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], **LFS_CONFIG)
    for d in ("/slots", "/data", "/data/iv", "/bl", "/bl/a"):
        fs.mkdir(d)
    for path, data in (("/slots/b.mfw", b"old image"), ("/data/iv/0", b"intervals"), ("/bl/a/x.mpy", b"old"),
                       ("/notes.txt", b"the owner's")):
        with fs.open(path, "wb") as f:
            f.write(data)
    return bytes(fs.context.buffer)


def test_pico_with_meter_data_is_refused_untouched_then_wiped(sim_factory, pico_dut, images, keys_dir):
    board = stock_pico(sim_factory, pico_dut, _old_meter_fs())
    flash_img = board.dir / "flash.img"
    before = flash_img.read_bytes()
    with pytest.raises(CommandError, match="already holds meter data .* give --wipe"):
        provision_repl(board.usb_port, images["pico"].read_bytes(), keys_dir, "pico")
    assert flash_img.read_bytes() == before

    report = provision_repl(board.usb_port, images["pico"].read_bytes(), keys_dir, "pico", wipe=True)
    files, dirs = read_fs(flash_after_reset(board)[FS_OFFSET:], "pico")
    # unique_id() is all zeros in rp2040js, so the default serial is the same on every emulated board
    assert report["serial"].startswith("MF")
    expected = device_files(images["pico"].read_bytes(), keys_dir, "pico", report["serial"])
    assert files == {**expected, "/notes.txt": b"the owner's"}
    assert "/data/iv" not in dirs


def test_image_for_another_board_is_refused_before_the_port_is_opened(images, keys_dir, tmp_path):
    with pytest.raises(CommandError, match="image is for board sim, not pico"):
        provision_repl(str(tmp_path / "no-such-port"), images["v1"].read_bytes(), keys_dir, "pico")
