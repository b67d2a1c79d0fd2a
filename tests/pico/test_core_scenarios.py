"""The core scenarios on the emulated Pico: the stock MicroPython firmware, unmodified, on an
emulated RP2040 (rp2040js), with the meter's files on the firmware's own littlefs, written through
the real rp2 flash driver. They run whatever --board says; without a firmware they skip, saying
how to get one."""
import json
import subprocess
import sys
from pathlib import Path

from hil.metrology import true_energy_mwh
from hil.pytest_plugin import PICO_TIMEOUT_S
from meterfw.image import parse_image
from meterfw.upgrade import continuity

MFW = str(Path(sys.executable).parent / "meterfw")
TIMEOUT = str(PICO_TIMEOUT_S)


def cli(board, *args):
    proc = subprocess.run([MFW, "--port", board.port, "--keys", str(board.keys_dir), "--timeout", TIMEOUT, *args],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(board, *args):
    rc, out, err = cli(board, *args, "--json")
    assert out, err
    return rc, json.loads(out)


def status(board):
    rc, st = cli_json(board, "status")
    assert rc == 0
    return st


def intervals(board):
    return cli_json(board, "read", "intervals")[1]


def assert_every_interval_intact_and_true(records, seed):
    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    for prev, rec in zip(records, records[1:]):
        assert rec["register_mwh"] - prev["register_mwh"] == rec["energy_mwh"]
    for r in records:
        if not {"partial", "estimated"} & set(r["flags"]):
            assert r["energy_mwh"] == true_energy_mwh(seed, r["start"], r["start"] + r["duration_s"]), r


def assert_back_on_v1(board, bad_image):
    st = status(board)
    assert st["active_version"] == "1.0.0" and st["active_slot"] == "a" and st["confirmed"]
    assert parse_image(Path(bad_image).read_bytes()).image_id.hex() in st["rejected"]
    return st


def test_pico_live_upgrade_confirmed_with_every_interval_intact(make_pico, pico_images):
    board = make_pico()
    before = board.wait_intervals(2)
    rc, report = cli_json(board, "upgrade", str(pico_images["v2"]))
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["intervals_missed"] == 0 and report["intervals_duplicated"] == 0 and report["energy_conserved"]
    st = status(board)
    assert (st["board"], st["active_version"], st["active_slot"], st["confirmed"]) == ("pico", "1.1.0", "b", True)
    records = board.wait_intervals(len(intervals(board)) + 1)
    assert records[:len(before)] == before
    assert_every_interval_intact_and_true(records, board.seed)
    assert any("firmware-change" in r["flags"] for r in records)
    # Before and after agree in everything but the clock against the host's, which differs by
    # the emulator's backlog; against the rig's clock (which its RTC and front-end keep) it holds.
    assert [d for d in report["discrepancies"] if "clock" not in d] == []
    assert_clock_agrees_with_the_rig(board)


def assert_clock_agrees_with_the_rig(board):
    import time

    emulated_us, wall_us = board.sim.emulated_us()
    t0 = time.time()
    meter_s = status(board)["time_s"]
    rig_s = t0 - (wall_us - emulated_us) / 1e6  # the wall clock less the emulator's backlog
    assert abs(meter_s - rig_s) <= 2 + (time.time() - t0), (meter_s, rig_s)


def test_pico_revert_after_crash_at_import(make_pico, pico_images):
    board = make_pico()
    rc, report = cli_json(board, "upgrade", str(pico_images["crash_at_import"]), "--when", "now")
    assert rc == 3 and report["result"] == "reverted" and "crashed" in report["reason"], report
    assert_back_on_v1(board, pico_images["crash_at_import"])


def test_pico_revert_after_hang_via_the_chips_watchdog(make_pico, pico_images):
    board = make_pico(watchdog_ms=2000, trial_attempts=1)
    rc, report = cli_json(board, "upgrade", str(pico_images["hang"]), "--when", "now")
    assert rc == 3 and report["result"] == "reverted", report
    assert_back_on_v1(board, pico_images["hang"])
    log = board.supervisor_log()
    assert "watchdog expired (emulated chip)" in log  # the RP2040's own watchdog, in emulated time


def test_pico_bad_signature_refused_before_the_slot_is_touched(make_pico, pico_images, tmp_path):
    board = make_pico()
    data = bytearray(pico_images["v2"].read_bytes())
    img = parse_image(bytes(data))
    sig_at = img.payload_offset - 1  # the last byte of the signatures, just before the payload
    data[sig_at] ^= 0x01
    bad = tmp_path / "bad.mfw"
    bad.write_bytes(bytes(data))
    before = status(board)
    rc, report = cli_json(board, "upgrade", str(bad))
    assert rc == 4 and report["result"] == "rejected" and "signature" in report["reason"], report
    after = status(board)
    for key in ("active_version", "active_slot", "slots", "confirmed", "rejected"):
        assert after[key] == before[key], key


def test_pico_transfer_resumes_after_a_power_cut(make_pico, pico_images):
    board = make_pico()
    status(board)  # up and answering
    tool = subprocess.Popen([MFW, "--port", board.port, "--keys", str(board.keys_dir), "--timeout", TIMEOUT,
                             "upgrade", str(pico_images["big"]), "--when", "now", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Past the first 64 KiB commit of the slot file: what came after it goes with the power.
        board.sim.wait_for(lambda st: st["line"]["to_device"]["delivered"] > 75_000, 300, "75 KB sent")
        board.sim.power_cycle()
    finally:
        tool.kill()  # the technician's tool gave up with the meter
        tool.wait()
    st = status(board)
    assert st["boot_reason"] == "power-on" and st["active_version"] == "1.0.0"
    assert st["update"]["first_not_transferred_block"] == 65536 // st["update"]["block_size"]
    rc, report = cli_json(board, "upgrade", str(pico_images["big"]), "--when", "now")
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["resumed_from_block"] == 65536 // st["update"]["block_size"]


def test_pico_bootloader_update_falls_back_from_a_broken_one_then_confirms(make_pico, keys_dir, tmp_path):
    """The first stage on silicon's own flash driver: a bootloader that fails to start runs the
    old copy again (machine.reset into it); a good one is confirmed after a healthy boot."""
    import shutil

    from meterfw.image import build_image
    from meterfw.keys import load_keys
    from meterfw.paths import BOOTLOADER

    keys = load_keys(keys_dir)
    broken = tmp_path / "bootloader"
    shutil.copytree(BOOTLOADER, broken, ignore=shutil.ignore_patterns("__pycache__"))
    boot = broken / "boot.py"
    boot.write_text('raise RuntimeError("broken bootloader (test image)")\n' + boot.read_text())
    images = {}
    for name, src in (("broken", broken), ("good", BOOTLOADER)):
        images[name] = tmp_path / f"{name}.mfw"
        images[name].write_bytes(build_image(src, "pico", "0.2.0", keys, kind="bootloader", build_time=1))
    board = make_pico()
    before = board.wait_intervals(1)
    rc, report = cli_json(board, "upgrade", str(images["broken"]), "--when", "now")
    assert rc == 3 and report["result"] == "reverted" and "bootloader 0.2.0" in report["reason"], report
    assert status(board)["bootloader"] == {"version": "0.1.0", "copy": "a", "trial": False, "security_version": 0,
                                           "floor": 0}
    rc, report = cli_json(board, "upgrade", str(images["good"]), "--when", "now")
    assert rc == 0 and report["result"] == "confirmed", report
    st = status(board)
    assert st["bootloader"]["version"] == "0.2.0" and st["bootloader"]["copy"] == "b" and st["confirmed"]
    records = board.wait_intervals(len(intervals(board)) + 1)
    assert records[:len(before)] == before
    assert_every_interval_intact_and_true(records, board.seed)
