"""`meterfw uf2`: the stock firmware and a provisioned filesystem in one UF2, checked against the
real MicroPython build and littlefs, and every bad input refused in one line with no file left."""
import json
import os
import struct

import pytest

from meterfw.cli import main
from meterfw.errors import CommandError
from meterfw.provision import device_files, flash_geometry, read_fs
from meterfw.uf2 import (BLOCK_BYTES, FLASH_BASE, PAYLOAD_BYTES, PICO_BOARDS, parse_uf2, pico_flash_image,
                         write_uf2)

FAMILY = PICO_BOARDS["pico"]["family"]
FLASH_BYTES = PICO_BOARDS["pico"]["flash_bytes"]
FS_OFFSET = flash_geometry("pico")["offset"]


@pytest.fixture(scope="module")
def firmware(pico_dut) -> bytes:
    """The stock RPI_PICO firmware's bytes (pico_dut skips, or fails under CI, without one)."""
    return pico_dut.firmware.read_bytes()


def run_uf2(tmp_path, capsys, firmware_path, image_path, keys_dir, *extra):
    out = tmp_path / "meter.uf2"
    code = main(["uf2", "--board", "pico", "--firmware", str(firmware_path), "--image", str(image_path),
                 "--keys", str(keys_dir), "-o", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def with_block(uf2: bytes, index: int, **fields) -> bytes:
    """The UF2 with one block's header fields changed."""
    names = ("magic0", "magic1", "flags", "address", "size", "block_no", "blocks", "family")
    data = bytearray(uf2)
    head = dict(zip(names, struct.unpack_from("<8I", data, index * BLOCK_BYTES)))
    head.update(fields)
    struct.pack_into("<8I", data, index * BLOCK_BYTES, *(head[n] for n in names))
    return bytes(data)


def test_written_regions_parse_back_to_the_same_bytes():
    fw = bytes(range(256)) * 7 + b"tail"  # not a whole page: padded with erased bytes
    fs = os.urandom(4 * 4096)
    uf2 = write_uf2({0: fw, FS_OFFSET: fs}, FAMILY)
    assert len(uf2) == BLOCK_BYTES * (8 + 64)
    pages = parse_uf2(uf2, FAMILY, FLASH_BYTES)
    assert b"".join(pages[o] for o in range(0, 8 * PAYLOAD_BYTES, PAYLOAD_BYTES)) == fw.ljust(8 * 256, b"\xff")
    assert b"".join(pages[FS_OFFSET + o] for o in range(0, len(fs), PAYLOAD_BYTES)) == fs


def test_stock_firmware_uf2_parses_to_its_raw_twin(firmware, pico_dut):
    twin = pico_dut.firmware.with_suffix(".bin")
    if not twin.is_file():
        pytest.skip(f"no raw twin {twin} of the firmware to compare with")
    raw = twin.read_bytes()
    pages = parse_uf2(firmware, FAMILY, FLASH_BYTES)
    assert sorted(pages) == list(range(0, len(pages) * PAYLOAD_BYTES, PAYLOAD_BYTES))
    # The UF2 carries the last page padded with zeros, as uf2conv and picotool write it.
    padded = raw.ljust(len(pages) * PAYLOAD_BYTES, b"\0")
    assert b"".join(pages[o] for o in sorted(pages)) == padded
    flash = pico_flash_image(firmware, None)
    assert flash == padded + b"\xff" * (FLASH_BYTES - len(padded))


def test_meter_uf2_holds_the_firmware_and_a_filesystem_that_mounts(tmp_path, capsys, firmware, pico_dut, images,
                                                                   keys_dir):
    code, out, err, path = run_uf2(tmp_path, capsys, pico_dut.firmware, images["pico"], keys_dir,
                                   "--serial", "MF0001", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    uf2 = path.read_bytes()
    assert report == {"output": str(path), "board": "pico", "serial": "MF0001", "firmware_bytes": 339712,
                      "fs_bytes": 352 * 4096, "uf2_bytes": len(uf2), "blocks": len(uf2) // BLOCK_BYTES}
    pages = parse_uf2(uf2, FAMILY, FLASH_BYTES)
    fw_pages = parse_uf2(firmware, FAMILY, FLASH_BYTES)
    assert {o: p for o, p in pages.items() if o < FS_OFFSET} == fw_pages
    # The whole region is in the file, erased blocks too, so no old filesystem survives under it.
    assert sorted(o for o in pages if o >= FS_OFFSET) == list(range(FS_OFFSET, FLASH_BYTES, PAYLOAD_BYTES))

    files, dirs = read_fs(b"".join(pages[o] for o in range(FS_OFFSET, FLASH_BYTES, PAYLOAD_BYTES)), "pico")
    expected = device_files(images["pico"].read_bytes(), keys_dir, "pico", "MF0001")
    assert files == expected
    assert files["/slots/a.mfw"] == images["pico"].read_bytes()
    assert files["/main.py"].startswith(b"# /main.py")
    assert any(p.startswith("/bl/a/bootloader/") and p.endswith(".mpy") for p in files)
    assert {"/data", "/boot", "/slots", "/bl", "/bl/a", "/bl/a/bootloader", "/board", "/keys"} <= set(dirs)
    assert json.loads(files["/identity.json"]) == {"serial": "MF0001", "board": "pico"}


def test_human_output_is_one_line(tmp_path, capsys, pico_dut, images, keys_dir):
    code, out, err, path = run_uf2(tmp_path, capsys, pico_dut.firmware, images["pico"], keys_dir)
    assert code == 0 and err == "" and path.is_file()
    assert out.count("\n") == 1 and out.startswith(f"{path}: pico meter MF")


def _fs_overlap(fw):
    n = len(fw) // BLOCK_BYTES
    return with_block(fw, n - 1, address=FLASH_BASE + FS_OFFSET)


BAD_FIRMWARE = {
    "not_a_uf2": (lambda fw: b"MicroPython, but as a zip" * 100, "not a UF2 file"),
    "wrong_family": (lambda fw: with_block(fw, 3, family=0xE48BFF59), "another chip: family 0xe48bff59"),
    "truncated_mid_block": (lambda fw: fw[:-100], "truncated"),
    "truncated_whole_blocks": (lambda fw: fw[:-BLOCK_BYTES * 2], "truncated: 1325 of its 1327 blocks"),
    "firmware_overlapping_the_fs_region": (_fs_overlap, "into the filesystem region at 0x100a0000"),
    "block_outside_flash": (lambda fw: with_block(fw, 5, address=0x20000000), "outside the 2048 KiB flash"),
    "block_written_twice": (lambda fw: with_block(fw, 5, address=FLASH_BASE), "writes 0x10000000 again"),
    "odd_payload_size": (lambda fw: with_block(fw, 5, size=476), "carries 476 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIRMWARE))
def test_bad_firmware_is_refused_in_one_line_and_writes_nothing(case, tmp_path, capsys, firmware, images,
                                                                 keys_dir):
    damage, message = BAD_FIRMWARE[case]
    bad = tmp_path / "firmware.uf2"
    bad.write_bytes(damage(firmware))
    code, out, err, path = run_uf2(tmp_path, capsys, bad, images["pico"], keys_dir, "--json")
    assert code == 1 and out == ""
    assert err.startswith("meterfw: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == [bad]


def test_image_for_another_board_is_refused_and_writes_nothing(tmp_path, capsys, pico_dut, images, keys_dir):
    code, out, err, path = run_uf2(tmp_path, capsys, pico_dut.firmware, images["v1"], keys_dir)
    assert (code, out) == (1, "")
    assert err == "meterfw: cannot provision: image is for board sim, not pico\n"
    assert list(tmp_path.iterdir()) == []


def test_missing_firmware_file_is_one_line(tmp_path, capsys, images, keys_dir):
    code, out, err, path = run_uf2(tmp_path, capsys, tmp_path / "nope.uf2", images["pico"], keys_dir)
    assert (code, err) == (1, f"meterfw: no such file: {tmp_path / 'nope.uf2'}\n")
    assert not path.exists()


@pytest.mark.parametrize("board, message", [("pico2", "pico2 (RP2350) are not supported yet"),
                                            ("sim", "board sim has no UF2 loader")])
def test_boards_without_uf2_support_are_refused(board, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pico_flash_image(b"", None, board)
