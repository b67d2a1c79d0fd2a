"""The bootloader updates itself over the meter's link, power-safe: the first stage (/main.py) runs
the new copy on trial and falls back to the old one when it does not come up or does not confirm;
bad signatures, downgrades and bootloaders that cannot run the meter's image are refused before
any transfer. Meter data comes through all of it."""
import shutil
import subprocess

import pytest

from hil.flashfs import mounted
from hil.meter_cli import MFW, events, status, upgrade
from meterfw.image import build_image, parse_image
from meterfw.keys import load_keys
from meterfw.paths import BOOTLOADER


# Bootloaders that fail in one way each, made from bootloader/ by a small patch.
_BROKEN = {
    "crash_at_import": ("boot.py", lambda text: 'raise RuntimeError("broken bootloader (test image)")\n' + text),
    # Hangs before it could feed the watchdog: the first stage counts each boot, then falls back.
    "hang_at_import": ("boot.py", lambda text: "while True:\n    pass\n" + text),
    # Starts, but runs no application: it refuses every image as needing a newer platform.
    "no_healthy_app": ("api.py", lambda text: text.replace("VERSION = const(1)", "VERSION = const(0)")),
}


def event_names(board):
    return [e["name"] for e in events(board)]


@pytest.fixture(scope="module")
def bootloaders(tmp_path_factory, keys_dir, dut) -> dict:
    """Bootloader images for the DUT's board: 0.2.0 and 0.3.0 as they are, 0.1.5 (older than
    0.2.0), one signed by a stranger, one for an application that needs a newer platform, and
    the broken ones (_BROKEN), all 0.2.0."""
    out = tmp_path_factory.mktemp("bootloaders")
    keys = load_keys(keys_dir)
    made = {}

    def build(name, src=BOOTLOADER, version="0.2.0", **kw):
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(build_image(src, dut.board, version, keys, kind="bootloader", build_time=1, **kw))

    build("v0.2.0")
    build("v0.3.0", version="0.3.0")
    build("v0.1.5", version="0.1.5")
    build("api0", version="0.4.0", api=0)
    stranger = tmp_path_factory.mktemp("stranger") / "keys"
    subprocess.run([MFW, "keys", "init", "--dir", str(stranger)], check=True, capture_output=True)
    made["stranger"] = out / "stranger.mfw"
    made["stranger"].write_bytes(build_image(BOOTLOADER, dut.board, "0.2.0", load_keys(stranger),
                                             kind="bootloader", build_time=1))
    for name, (module, patch) in _BROKEN.items():
        src = out / name / "bootloader"
        shutil.copytree(BOOTLOADER, src, ignore=shutil.ignore_patterns("__pycache__"))
        path = src / module
        path.write_text(patch(path.read_text()))
        build(name, src=src)
    return made


def _unchanged(before, after):
    assert after["active_version"] == before["active_version"] and after["active_slot"] == before["active_slot"]
    assert after["state_hash"] == before["state_hash"] and after["register_mwh"] >= before["register_mwh"]


def test_bootloader_update_confirms_after_a_healthy_boot(board, bootloaders):
    before = status(board)
    assert before["bootloader"] == {"version": "0.1.0", "copy": "a", "trial": False, "security_version": 0,
                                    "floor": 0}
    rc, report = upgrade(board, bootloaders["v0.2.0"])
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["kind"] == "bootloader" and report["discrepancies"] == []
    assert report["intervals_missed"] == 0 and report["energy_conserved"]
    after = status(board)
    assert after["bootloader"]["version"] == "0.2.0" and after["bootloader"]["copy"] == "b"
    assert not after["bootloader"]["trial"] and after["update"]["result"] == "confirmed"
    _unchanged(before, after)
    names = event_names(board)
    assert "bootloader on trial" in names and "bootloader confirmed" in names
    # The next update goes into the copy the first one left: a bootloader never overwrites itself.
    rc, report = upgrade(board, bootloaders["v0.3.0"])
    assert rc == 0 and report["result"] == "confirmed", report
    assert status(board)["bootloader"]["copy"] == "a"


@pytest.mark.parametrize("broken", sorted(_BROKEN))
def test_a_bootloader_that_fails_falls_back_to_the_old_one(board, bootloaders, broken):
    before = status(board)
    rc, report = upgrade(board, bootloaders[broken])
    assert rc == 3 and report["result"] == "reverted", report
    assert "bootloader 0.2.0" in report["reason"]
    after = status(board)
    assert after["bootloader"] == before["bootloader"]  # copy a, version 0.1.0, confirmed
    assert after["update"]["result"] == "reverted" and after["confirmed"]
    _unchanged(before, after)
    assert "bootloader fell back" in event_names(board)
    # The meter takes a good bootloader afterwards, into the same copy the bad one had.
    rc, report = upgrade(board, bootloaders["v0.2.0"])
    assert rc == 0 and report["result"] == "confirmed", report


@pytest.mark.parametrize("name, code", [("stranger", "verification failed"), ("v0.1.5", "older than the running"),
                                        ("api0", "provides platform API 0")])
def test_bad_bootloaders_are_refused_before_any_transfer(board, bootloaders, name, code):
    if name == "v0.1.5":
        rc, report = upgrade(board, bootloaders["v0.2.0"])
        assert rc == 0, report
    before = status(board)
    rc, report = upgrade(board, bootloaders[name])
    assert rc == 4 and report["result"] == "rejected", report
    assert code in report["reason"]
    after = status(board)
    assert after["bootloader"] == before["bootloader"] and after["update"]["status"] == before["update"]["status"]
    _unchanged(before, after)
    with mounted(board.sim.dir / "flash.img") as fs:
        assert "bootloader.mfw" not in fs.listdir("/boot")


def test_an_image_that_needs_a_newer_platform_is_refused(board, tmp_path, keys_dir, dut):
    from meterfw.paths import FIRMWARE

    img = tmp_path / "api2.mfw"
    img.write_bytes(build_image(FIRMWARE, dut.board, "1.1.0", load_keys(keys_dir), api=2, build_time=1))
    before = status(board)
    rc, report = upgrade(board, img)
    assert rc == 4 and report["result"] == "rejected"
    assert report["reason"] == "image needs platform API 2, this bootloader provides 1"
    _unchanged(before, status(board))
    assert parse_image(img.read_bytes()).manifest["api"] == 2


def test_the_recovery_console_takes_the_bootloader_an_image_needs(make_board, tmp_path, keys_dir, dut):
    """An image that needs a newer platform than the meter's bootloader cannot run: the meter
    opens its recovery console, which takes a bootloader providing that platform; the new
    bootloader boots the image, which comes up healthy, and confirms itself."""
    from meterfw.paths import FIRMWARE

    keys = load_keys(keys_dir)
    app = tmp_path / "api2.mfw"
    app.write_bytes(build_image(FIRMWARE, dut.board, "1.1.0", keys, api=2, build_time=1))
    src = tmp_path / "bootloader"
    shutil.copytree(BOOTLOADER, src, ignore=shutil.ignore_patterns("__pycache__"))
    api = src / "api.py"
    api.write_text(api.read_text().replace("VERSION = const(1)", "VERSION = const(2)"))
    platform2 = tmp_path / "platform2.mfw"
    platform2.write_bytes(build_image(src, dut.board, "0.2.0", keys, kind="bootloader", api=2, build_time=1))
    board = make_board(image=app)
    st = status(board)
    assert st["mode"] == "recovery" and "needs platform API 2" in st["recovery_reason"]
    rc, report = upgrade(board, platform2)
    assert rc == 0 and report["result"] == "confirmed", report
    st = status(board)
    assert st.get("mode") != "recovery" and st["active_version"] == "1.1.0" and st["confirmed"]
    assert st["bootloader"]["version"] == "0.2.0" and not st["bootloader"]["trial"]
