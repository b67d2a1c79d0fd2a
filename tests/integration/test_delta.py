"""Delta updates on a meter: a delta upgrade ends in the same slot, byte for byte, as the full
image's; a delta for another image is refused before any transfer; one whose blocks were tampered
with is refused at verify with the meter unchanged; a delta resumes after a power cut; and a
revert after a delta upgrade returns to the old image, unchanged."""
import hashlib
import random
import struct

import pytest

from hil.flashfs import read_file
from hil.pytest_plugin import build_changed
from meterfw import delta as D
from meterfw import protocol as P
from meterfw.errors import CommandError
from meterfw.image import Image, assemble, canonical_json, pack_payload, sign_manifest
from meterfw.keys import load_keys
from meterfw.upgrade import upgrade


@pytest.fixture(scope="module")
def fix(tmp_path_factory, keys_dir, dut):
    """v1 with one module changed, at 1.1.0: a one-module fix."""
    return Image.read(build_changed(tmp_path_factory.mktemp("fix"), dut.board, keys_dir, "1.1.0", 1))


@pytest.fixture(scope="module")
def v1(images):
    return Image.read(images["v1"])


def _slot(board, name):
    """A slot file's bytes, read from the board's flash image; None on a board whose flash the
    rig cannot read (the emulated Pico: there the verify's hash against the signed manifest is
    what says the slot holds the image)."""
    if board.kind != "sim":
        return None
    return read_file(board.sim.dir / "flash.img", f"/slots/{name}.mfw")


def _same(board, name, img):
    got = _slot(board, name)
    return got is None or got == img.data


def _tampered(base: Image, new: Image) -> D.Delta:
    """A delta whose blocks make the new image with one byte of a changed module flipped: its
    recipes are well formed, the block they make is not the signed one."""
    data = bytearray(new.data)
    name = next(n for n in new.files if new.files[n] != base.files.get(n))
    at = new.data.index(new.files[name]) + len(new.files[name]) // 2
    data[at] ^= 0x40
    return D.Delta(base.image_id, D.BLOCK_SIZE, new.head, D.recipes(base.data, bytes(data)), new, new.size)


def test_a_delta_upgrade_confirms_with_the_full_images_slot_and_a_revert_returns_to_the_old(board, v1, fix):
    meter = board.meter()
    d = D.build(v1, fix)
    report = upgrade(meter, fix, deltas=[d], delta="only", when="now", poll_s=0.5)
    assert report["result"] == "confirmed", (report, board.console()[-3000:])
    assert report["method"] == "delta" and report["delta_base"] == v1.image_id.hex()
    assert report["bytes_on_wire"] < D.full_wire_bytes(fix) / 5, report
    # On the emulated Pico the clock differs from the host's by the emulator's backlog.
    assert [d for d in report["discrepancies"] if board.kind == "sim" or "clock" not in d] == []
    assert _same(board, "b", fix)  # what the full image would have put there
    assert _same(board, "a", v1)  # the base is only read
    meter.revert()
    st = meter.wait_until(lambda s: s["active_version"] == "1.0.0" and s.get("health") is not None,
                          60 * (10 if board.kind == "pico" else 1))
    assert st is not None and st["active_slot"] == "a", board.console()[-3000:]
    assert _same(board, "a", v1)
    meter.link.close()


def test_a_delta_for_another_image_is_refused_before_any_transfer(board, images, v1, fix):
    meter = board.meter()
    other = D.build(Image.read(images["v2"]), fix)  # made against v2; the meter runs v1
    before = meter.read_events()
    with pytest.raises(CommandError) as e:
        meter.upload(other)
    assert e.value.code == "wrong_base" and "1.0.0" in str(e.value)
    assert meter.update_state()["status"] == 0
    assert [x["name"] for x in meter.read_events()[len(before):]] == []  # no download started
    # The upgrade flow says so without asking the meter to start anything, and falls back to
    # the full image only when it has one.
    report = upgrade(meter, other, when="now")
    assert report["result"] == "rejected" and "no delta for the image the meter runs" in report["reason"]
    assert meter.status()["active_version"] == "1.0.0"
    meter.link.close()


def test_a_tampered_delta_is_refused_at_verify_and_the_meter_is_unchanged(board, v1, fix):
    meter = board.meter()
    meter.upload(_tampered(v1, fix))
    with pytest.raises(CommandError) as e:
        meter.verify()
    assert e.value.code == "verify_failed" and "hash" in str(e.value)
    st = meter.status()
    assert st["active_version"] == "1.0.0" and st["confirmed"] and st["update"]["result"] == "rejected"
    assert _same(board, "a", v1)
    meter.link.close()


def test_a_malformed_delta_block_is_refused_and_the_transfer_goes_on(board, v1, fix):
    meter = board.meter()
    d = D.build(v1, fix)
    meter.initiate(d.head, d.base_id)
    for bad in (b"\x00\x00\x00\x00", struct.pack("<IHH", 0, 0, 0) + b"C\xff\xff\xff\xff\x10\x00",
                struct.pack("<IHH", 0, 5, 0) + b"abc", struct.pack("<IHH", 0, 0, 0) + b"Z"):
        with pytest.raises(CommandError) as e:  # a block's reply is not sealed (it steers the flow)
            meter.link.request(P.UPD_BLOCK, meter.seal(P.UPD_BLOCK, bad))
        assert e.value.code == "bad_block", (bad, e.value)
    up = meter.upload(d)  # the same transfer, from where it stands
    assert up["resumed_from_block"] == 0 and meter.verify()["version"] == "1.1.0"
    meter.link.close()


def _with_blob(img: Image, keys, path, version):
    """img's files and 60 KB of random data, signed anew at `version`: an image past the meter's
    first 64 KiB commit of the slot file, so a power cut part-way leaves something to resume."""
    files = dict(img.files, **{"blob.bin": random.Random(1).randbytes(60_000)})
    payload = pack_payload(files)
    m = dict(img.manifest, version=version, payload_size=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    raw = canonical_json(m)
    path.write_bytes(assemble(raw, sign_manifest(raw, keys), payload))
    return path


class _Stop(Exception):
    pass


def test_a_delta_resumes_after_a_meter_power_cut(make_board, keys_dir, v1, fix, tmp_path):
    keys = load_keys(keys_dir)
    base = _with_blob(v1, keys, tmp_path / "base.mfw", "1.0.0")
    new = Image.read(_with_blob(fix, keys, tmp_path / "new.mfw", "1.1.0"))
    board = make_board(image=base)
    board.needs("power")
    meter = board.meter()
    d = D.build(Image.read(base), new)

    def progress(done, total):
        if done > 70_000:  # past the first 64 KiB commit
            board.sim.power_cycle()
            raise _Stop()

    with pytest.raises(_Stop):
        meter.upload(d, progress)
    meter.drop_session()
    assert meter.wait_until(lambda s: s.get("health") is not None, 60 * (10 if board.kind == "pico" else 1))
    st = meter.update_state()
    assert st["status"] == P.INITIATED and st["base"] == d.base_id.hex(), st
    assert st["first_not_transferred_block"] == 65536 // st["block_size"], st
    up = meter.upload(d)
    assert up["resumed_from_block"] == 32, up
    assert meter.verify()["version"] == "1.1.0"
    assert _same(board, "b", new)
    meter.link.close()
