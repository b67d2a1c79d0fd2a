"""Deltas on the host (host_tools/meterfw/delta.py): what a delta makes is the new image byte for
byte, it survives its file format, a malformed file is refused with one line, and the upgrade
flow picks a delta only for the image the meter runs and only when it costs fewer bytes."""
import pytest

from hil.pytest_plugin import build_changed
from meterfw import delta as D
from meterfw.image import Image, ImageError
from meterfw.upgrade import choose


@pytest.fixture(scope="module")
def imgs(tmp_path_factory, keys_dir, images, dut):
    out = tmp_path_factory.mktemp("delta")
    made = {"v1": Image.read(images["v1"]), "v2": Image.read(images["v2"])}
    for name, count in (("fix", 1), ("quarter", 8), ("all", None)):
        made[name] = Image.read(build_changed(out, dut.board, keys_dir, "1.1.0", count))
    return made


@pytest.mark.parametrize("to", ["v2", "fix", "quarter", "all"])
def test_a_delta_makes_the_new_image_byte_for_byte_and_survives_its_file(imgs, to):
    d = D.build(imgs["v1"], imgs[to])
    assert D.apply(imgs["v1"].data, d) == imgs[to].data
    again = D.parse_delta(d.encode())
    assert (again.recipes, again.base_id, again.image_id, again.size) == (d.recipes, d.base_id, d.image_id, d.size)
    assert d.wire_bytes() < D.full_wire_bytes(imgs[to])


def test_the_more_that_changed_the_more_a_delta_costs_and_a_fix_costs_under_a_tenth(imgs):
    cost = {n: D.build(imgs["v1"], imgs[n]).wire_bytes() / D.full_wire_bytes(imgs[n])
            for n in ("fix", "quarter", "all")}
    assert cost["fix"] < 0.10 and cost["fix"] < cost["quarter"] < cost["all"] < 1, cost


def test_every_recipe_makes_one_block_or_the_images_last(imgs):
    d = D.build(imgs["v1"], imgs["fix"])
    assert len(d.recipes) == -(-len(imgs["fix"].data) // D.BLOCK_SIZE)
    assert all(len(r) < D.BLOCK_SIZE + 64 for r in d.recipes)


def test_malformed_delta_files_are_refused_with_one_line(imgs):
    good = D.build(imgs["v1"], imgs["fix"]).encode()
    cases = {"wrong magic": b"XXXX" + good[4:], "truncated header": good[:20],
             "truncated at block": good[:-3], "bytes after": good + b"\x00",
             "not an image head": good[:44] + b"\x00" * 8 + good[52:]}
    for name, data in cases.items():
        with pytest.raises(ImageError) as e:
            D.parse_delta(data)
        assert "\n" not in str(e.value), name


def test_deltas_are_for_firmware_and_for_two_different_images(imgs):
    with pytest.raises(ImageError, match="same image"):
        D.build(imgs["v1"], imgs["v1"])


def test_the_upgrade_takes_a_delta_only_for_the_running_image_and_when_it_costs_less(imgs):
    v1, fix = imgs["v1"], imgs["fix"]
    d = D.build(v1, fix)
    other = D.build(imgs["v2"], fix)
    running = v1.image_id.hex()
    assert choose(fix, [other, d], "auto", running) == (d, None)
    assert choose(fix, [other, d], "never", running) == (fix, None)
    assert choose(fix, [other], "auto", running) == (fix, None)  # falls back to the full image
    sent, why = choose(fix, [other], "only", running)
    assert sent is None and "no delta for the image the meter runs" in why
    assert choose(d, [], "auto", running) == (d, None)
    assert choose(d, [], "auto", imgs["v2"].image_id.hex())[0] is None
    assert choose(d, [], "never", running)[0] is None
    # A delta that costs as much as the image goes no further than the image would.
    huge = D.Delta(d.base_id, d.block_size, d.head, [b"x" * 4096] * len(d.recipes), d.target, d.size)
    assert choose(fix, [huge], "auto", running) == (fix, None)
    assert choose(fix, [huge], "only", running) == (huge, None)


def test_the_cli_finds_the_deltas_that_make_its_image_and_skips_other_files(imgs, tmp_path):
    from meterfw.cli import _deltas

    v1, v2, fix = imgs["v1"], imgs["v2"], imgs["fix"]
    (tmp_path / "from-v1.mfd").write_bytes(D.build(v1, fix).encode())
    (tmp_path / "from-v2.mfd").write_bytes(D.build(v2, fix).encode())
    (tmp_path / "to-v2.mfd").write_bytes(D.build(v1, v2).encode())  # makes another image
    (tmp_path / "junk.mfd").write_bytes(b"MFD1 not really")
    found = _deltas(fix, tmp_path)
    assert sorted(d.base_id for d in found) == sorted([v1.image_id, v2.image_id])
    assert _deltas(D.build(v1, fix), tmp_path) == []  # a delta given goes alone
    assert _deltas(fix, tmp_path / "missing") == []
