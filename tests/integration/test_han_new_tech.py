"""Scenario 3 (BR8): a HAN technology the meter does not know, then learns from a driver module in a
signed image. A meter whose image lacks the new-tech driver (firmware/ minus
han_driver_new_tech.py) enrolls a zigbee-se device and refuses a new-tech one as unrecognised,
naming the options; the utility builds and signs an image that ships the driver and upgrades the
meter the normal way (`meterfw upgrade`); then the same new-tech device enrolls (its commissioning:
firmware/han_driver_new_tech.py), and the zigbee-se device enrolled before is still joined and
answering: the meter runs both drivers on its one radio. Each join's outcome reaches the host as a
pushed alarm (HAN_ENROLLMENT), success or the stage that failed."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.pytest_plugin import SEED, MeterBoard, start_dut
from meterfw import protocol as P
from meterfw.han import with_crc
from meterfw.paths import FIRMWARE
from test_han import CODE, han_dut, mfw, on_air, rig, row

BIN = Path(sys.executable).parent
ZIGBEE = "00124B0001A2C000"
NEW = "F4CE360001A2C001"
NEW_CODE = with_crc(bytes.fromhex("5A17C0DE0BADF00D")).hex()
WRONG_CODE = with_crc(bytes.fromhex("0102030405060708")).hex()  # a good CRC, not the device's


def build(*args) -> None:
    proc = subprocess.run([str(BIN / "meterfw"), "image", "build", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def without_driver(tmp_path_factory, keys_dir, dut) -> Path:
    """The meter's image before the technology arrived: firmware/ without its driver, signed."""
    out = tmp_path_factory.mktemp("new-tech")
    src = out / "firmware"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__", "han_driver_new_tech.py"))
    build("--board", dut.board, "--version", "1.0.0", "--keys", keys_dir, "--src", src, "-o", out / "old.mfw")
    return out / "old.mfw"


def pushed_enrollments(meter, eui, count) -> list[dict]:
    """The HAN_ENROLLMENT alarms for `eui` the meter pushes (unsolicited, until acknowledged),
    once `count` of them have come, oldest first."""
    got = {}
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        got.update({a["seq"]: a for a in meter.listen(1)
                    if a["code"] == P.ALARM_CODES["HAN_ENROLLMENT"] and a["message"].startswith(eui)})
    return [got[k] for k in sorted(got)]


def han_item(meter) -> dict:
    return [i for i in meter.health()["items"] if i["check"] == "han"][0]


def test_an_unknown_technology_is_learnt_by_an_image_upgrade_and_the_old_devices_keep_working(
        sim_factory, keys_dir, dut, without_driver, tmp_path):
    interval_s = han_dut(dut)
    board = MeterBoard(start_dut(sim_factory, dut, without_driver, keys_dir, interval_s, SEED, {"han": "ok"}),
                       SEED, interval_s, keys_dir, dut.kind)
    rig(board, "add", "--eui64", ZIGBEE, "--install-code", CODE, "--kind", "thermostat")
    rig(board, "add", "--eui64", NEW, "--install-code", NEW_CODE, "--kind", "display", "--tech", "new-tech")
    m = board.meter()
    assert m.han_table()["drivers"] == ["zigbee-se"]

    rc, r, err = mfw(board, "han", "join", "--eui64", ZIGBEE, "--install-code", CODE, "--window-s", "10", "--wait", "10")
    assert rc == 0 and r["state"] == "joined" and r["outcome"]["ok"], err
    zigbee_short = r["short"]
    [joined] = pushed_enrollments(m, ZIGBEE, 1)
    assert joined["value"] == P.HAN_STAGES.index("joined") and joined["report"] == "immediate"

    rc, _, err = mfw(board, "han", "join", "--eui64", NEW, "--install-code", NEW_CODE, "--tech", "new-tech")
    assert rc == 1 and err.count("\n") == 1, err
    assert "no driver for new-tech (it has zigbee-se)" in err and "through a bridge to zigbee-se" in err
    assert "fit a meter that supports new-tech" in err
    assert [d["eui64"] for d in m.han_table()["devices"]] == [ZIGBEE]     # refused: nothing stored
    assert on_air(board, NEW)["associations"] == 0                        # nothing was said to it
    m.link.close()

    # The utility ships the technology: an image that has the driver, built and signed, then the
    # normal upgrade (it picks a delta or the full image).
    build("--board", dut.board, "--version", "1.1.0", "--keys", keys_dir, "-o", tmp_path / "new.mfw")
    rc, report, err = mfw(board, "upgrade", str(tmp_path / "new.mfw"), "--when", "now")
    assert rc == 0 and report["result"] == "confirmed", err
    m = board.meter()
    st = m.status()
    assert st["active_version"] == "1.1.0" and all(i["ok"] for i in st["health"]), st["health"]
    assert m.han_table()["drivers"] == ["new-tech", "zigbee-se"]
    z = row(m, ZIGBEE)
    assert z["state"] == "joined" and z["short"] == zigbee_short and z["outcome"]["ok"]
    idle_modules = m.status()["heap"]["modules"]

    # A wrong code: the meter's proof does not verify for the joiner, which gives up.
    m.han_join(NEW, WRONG_CODE, 5, tech="new-tech")
    r = m.han_outcome(NEW, 15)
    assert r["state"] == "not_joined" and "install code" in r["outcome"]["message"]
    assert on_air(board, NEW)["key_failures"] == 1 and on_air(board, NEW)["state"] == "unjoined"
    # The right one: the same device joins, is comm-tested and self-tested by its own driver.
    rc, r, err = mfw(board, "han", "join", "--eui64", NEW, "--install-code", NEW_CODE, "--tech", "new-tech",
                     "--window-s", "10", "--wait", "10")
    assert rc == 0 and r["state"] == "joined" and r["tech"] == "new-tech" and r["kind"] == "display", err
    assert r["outcome"]["comm_test"] == "pass" and r["outcome"]["self_test"] == "pass"
    air = on_air(board, NEW)
    assert air["state"] == "joined" and air["short"] == r["short"] and air["frames_out"] >= 4
    assert [(a["value"], a["message"].split(": ", 1)[1][:20]) for a in pushed_enrollments(m, NEW, 2)] == [
        (P.HAN_STAGES.index("did not join"), "the device asked to "), (P.HAN_STAGES.index("joined"), "joined")]

    # Both technologies' devices answer their own driver on the one radio (BR8).
    before = on_air(board, ZIGBEE)["frames_out"]
    item = han_item(m)
    assert item["status"] == "pass" and item["value"] == 2, item
    assert on_air(board, ZIGBEE)["frames_out"] > before
    assert m.status()["heap"]["modules"] == idle_modules                # the drivers left with the jobs
    m.link.close()

    # An image that drops the driver again: the new-tech device is reported (an important
    # failure: the image stays), and the zigbee-se device is still checked and answering.
    build("--board", dut.board, "--version", "1.2.0", "--keys", keys_dir, "--src", without_driver.parent / "firmware",
          "-o", tmp_path / "dropped.mfw")
    rc, report, err = mfw(board, "upgrade", str(tmp_path / "dropped.mfw"), "--when", "now")
    assert rc == 0 and report["result"] == "confirmed", err
    m = board.meter()
    item = han_item(m)
    assert item["status"] == "fail" and item["message"] == f"no driver in this image for {NEW} (new-tech)", item
    assert item["value"] == 1
    m.link.close()
