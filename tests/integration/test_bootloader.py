"""Trial boots, automatic revert that never repeats, and the recovery console, against the
simulated meter over the real link. Each image that fails does so in one injected way."""
import json
import subprocess
from pathlib import Path

import pytest

from hil.flashfs import mounted
from hil.meter_cli import MFW, cli, events, status, upgrade
from meterfw import protocol as P
from meterfw.errors import CommandError
from meterfw.image import parse_image


def image_id(path):
    return parse_image(Path(path).read_bytes()).image_id.hex()


def assert_back_on_v1(board, bad_image):
    st = status(board)
    assert st["active_version"] == "1.0.0" and st["active_slot"] == "a" and st["confirmed"]
    assert image_id(bad_image) in st["rejected"]
    names = [e["name"] for e in events(board)]
    assert "reverted" in names
    return st


def test_revert_after_crash_at_import(board, variant_images):
    rc, report = upgrade(board, variant_images["crash_at_import"])
    assert rc == 3 and report["result"] == "reverted"
    assert "crashed" in report["reason"]
    assert_back_on_v1(board, variant_images["crash_at_import"])
    assert "application crashed" in [e["name"] for e in events(board)]


def test_revert_after_hang_via_watchdog(make_board, variant_images):
    board = make_board(watchdog_ms=1500, trial_attempts=1)
    rc, report = upgrade(board, variant_images["hang"])
    assert rc == 3 and report["result"] == "reverted"
    assert "did not confirm" in report["reason"]
    assert_back_on_v1(board, variant_images["hang"])
    boots = [e["value"] for e in events(board) if e["name"] == "boot"]
    assert 1 in boots  # a boot with reason index 1: the watchdog fired on the hung image
    assert board.state()["last_cause"] == "watchdog" or board.state().get("boots", 0) >= 3


def test_revert_after_critical_health_failure(board, variant_images):
    rc, report = upgrade(board, variant_images["critical_health"])
    assert rc == 3 and "critical health check failed: injected" in report["reason"]
    assert_back_on_v1(board, variant_images["critical_health"])


def test_stay_after_important_health_failure_and_report(board, variant_images):
    rc, report = upgrade(board, variant_images["important_health"])
    assert rc == 0 and report["result"] == "confirmed"
    st = status(board)
    assert st["active_version"] == "1.1.0" and st["confirmed"]
    injected = [h for h in st["health"] if h["check"] == "injected"]
    assert injected == [{"check": "injected", "severity": "important", "ok": False, "message": "injected failure"}]
    assert any(e["name"] == "health check failed" and e["value"] == 2 for e in events(board))


def test_rejected_image_refused_on_reactivation(board, variant_images):
    bad = variant_images["crash_at_import"]
    assert upgrade(board, bad)[0] == 3
    before = status(board)
    rc, report = upgrade(board, bad)
    assert rc == 4 and report["result"] == "rejected" and "rejected before" in report["reason"]
    after = status(board)
    assert (after["active_version"], after["slots"], after["rejected"]) == \
        (before["active_version"], before["slots"], before["rejected"])


def test_forced_reactivation_needs_authentication(board, variant_images, link, meter):
    bad = variant_images["crash_at_import"]
    assert upgrade(board, bad)[0] == 3
    img_id = bytes.fromhex(image_id(bad))
    with pytest.raises(CommandError) as e:
        link.request_json(P.UNREJECT, raw=img_id)
    assert e.value.code in ("auth_required", "auth_failed")  # no session, or the upgrade's (its verdict's)
    assert image_id(bad) in meter.status()["rejected"]
    rc, _, err = subprocess.run([MFW, "--port", board.port, "allow", str(bad)], capture_output=True, text=True).returncode, 0, 0
    assert rc == 1  # no keys, no authority
    assert image_id(bad) in meter.status()["rejected"]
    rc, out, err = cli(board, "allow", str(bad), "--json")
    assert rc == 0 and json.loads(out)["was_rejected"] is True, err
    assert image_id(bad) not in meter.status()["rejected"]
    assert "rejected image allowed again by operator" in [e["name"] for e in meter.read_events()]
    rc, report = upgrade(board, bad)  # forced through: it is tried (and fails) once more
    assert rc == 3 and report["result"] == "reverted"


def _stop_and_edit(board):
    board.needs("files")  # the sim's flash.img is the filesystem itself
    board.sim.stop()
    return mounted(board.sim.dir / "flash.img")


def _restart(board, sim_factory):
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port


def test_no_ping_pong_when_old_image_also_fails_opens_recovery(board, variant_images, sim_factory):
    bad = variant_images["crash_at_import"]
    assert upgrade(board, bad)[0] == 3
    with _stop_and_edit(board) as fs, fs.open("/slots/a.mfw", "wb") as f:
        f.write(bad.read_bytes())  # now the image it reverted to fails as well
    _restart(board, sim_factory)
    st = board.meter().wait_until(lambda s: s.get("mode") == "recovery", 30)
    assert st is not None, board.sim.console()
    assert st["active_slot"] == "a" and st["boot_reason"] == "recovery"
    assert "failed to come up healthy" in st["recovery_reason"]
    evs = events(board)
    reverted_at = max(e["seq"] for e in evs if e["name"] == "reverted")
    assert [e for e in evs if e["seq"] > reverted_at and e["name"] == "reverted"] == []  # no ping-pong
    assert "recovery console opened" in [e["name"] for e in evs]
    rc, out, err = cli(board, "status")
    assert rc == 0 and "RECOVERY CONSOLE" in out


def test_recovery_console_upload_and_activate(board, variant_images, images, sim_factory):
    bad = variant_images["crash_at_import"]
    with _stop_and_edit(board) as fs, fs.open("/slots/a.mfw", "wb") as f:
        f.write(bad.read_bytes())
    _restart(board, sim_factory)
    meter = board.meter()
    assert meter.wait_until(lambda s: s.get("mode") == "recovery", 30) is not None
    meter.upload(images["v2"].read_bytes())
    meter.verify()
    meter.activate("now")
    st = meter.wait_until(lambda s: s.get("mode") != "recovery" and s["update"].get("result") == "confirmed", 40)
    assert st is not None, board.sim.console()
    assert st["active_version"] == "1.1.0" and st["confirmed"] and st["active_slot"] == "b"


def test_torn_write_of_boot_control_keeps_last_good(board, images, sim_factory):
    assert upgrade(board, images["v2"])[0] == 0
    with _stop_and_edit(board) as fs:
        newest = max(("/boot/bcb0", "/boot/bcb1"), key=lambda p: int.from_bytes(_read(fs, p)[4:8], "little"))
        good = _read(fs, newest)
        with fs.open(newest, "wb") as f:
            f.write(good[: len(good) // 3])  # the write tore a third of the way through
    _restart(board, sim_factory)
    st = board.meter().wait_until(lambda s: s.get("mode") != "recovery", 30)
    assert st is not None and st["active_version"] in ("1.0.0", "1.1.0")
    assert st["confirmed"] or st["trial"]
    assert "boot control rebuilt" not in [e["name"] for e in events(board)]


def test_both_boot_control_copies_corrupt_still_boots(board, images, sim_factory):
    assert upgrade(board, images["v2"])[0] == 0
    with _stop_and_edit(board) as fs:
        for p in ("/boot/bcb0", "/boot/bcb1"):
            with fs.open(p, "wb") as f:
                f.write(b"\x00garbage" * 4)
    _restart(board, sim_factory)
    st = board.meter().wait_until(lambda s: s.get("mode") != "recovery", 30)
    assert st is not None and st["active_version"] == "1.1.0"  # the newest image that verifies
    assert "boot control rebuilt" in [e["name"] for e in events(board)]


def _read(fs, path):
    with fs.open(path, "rb") as f:
        return f.read()
