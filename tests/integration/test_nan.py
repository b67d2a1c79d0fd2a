"""The meter's network link (NAN/WAN) behind its driver (firmware/nan.py) on the rig's NAN medium
(hil/nan.py), scenarios 4 and 5: a technology change is an image whose NAN driver is the new mesh
profile's, delivered over the old NAN by the normal upgrade flow; it attaches to the collector,
passes its health check, confirms, and the host reaches it over the new profile from then on, after
a power cut too. A driver whose link does not come up (its network is not admitted) leaves the meter
unreachable on trial only until its health check fails critically on `nan`: the meter goes back to
the old image and driver by itself, reachable over the old NAN, data intact, the revert pushed."""
import json
import shutil
import time

import pytest

from hil.nan import NETWORK_ID
from hil.supervisor import command
from meterfw import protocol as P
from meterfw.errors import TransportError
from meterfw.image import build_image
from meterfw.keys import load_keys
from meterfw.paths import FIRMWARE
from test_revert_alarms import FIRMWARE_REVERTED, revert_alarms, upload
from test_upgrade import assert_continuous_and_true, cli, cli_json


def _mesh_image(out, board, keys_dir, name, network_id=NETWORK_ID):
    """firmware/ with its NAN driver the mesh profile's (the one line of nan.py), joining
    `network_id`."""
    src = out / name
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    for module, old, new in (("nan.py", "import nan_serial as driver", "import nan_mesh as driver"),
                             ("nan_mesh.py", f"NETWORK_ID = const(0x{NETWORK_ID:04X})", f"NETWORK_ID = const({network_id})")):
        text = (src / module).read_text()
        assert old in text
        (src / module).write_text(text.replace(old, new))
    image = out / f"{name}.mfw"
    image.write_bytes(build_image(src, board, "1.1.0", load_keys(keys_dir), build_time=1))
    return image


@pytest.fixture(scope="module")
def mesh_images(tmp_path_factory, keys_dir, dut):
    if dut.kind == "port":
        pytest.skip("the NAN medium is the rig's")
    out = tmp_path_factory.mktemp("nan")
    return {"mesh": _mesh_image(out, dut.board, keys_dir, "mesh"),
            "unadmitted": _mesh_image(out, dut.board, keys_dir, "unadmitted", 0x0BAD)}


def collector(board) -> dict:
    """The NAN collector's profile and counters now (a fresh state.json: `sync`)."""
    return command(board.dir, "sync")["line"]["nan"]


def nan_item(health):
    return [i for i in health if i["check"] == "nan"][0]


def test_new_nan_driver_delivered_over_the_old_nan_then_reached_over_the_new_one(board, mesh_images, keys_dir):
    port = board.port
    board.wait_intervals(2)
    assert collector(board)["profile"] == "serial"
    assert nan_item(cli_json(port, "health")["items"])["status"] == "pass"  # the old driver's link

    rc, out, err = cli(port, "upgrade", str(mesh_images["mesh"]), "--json", keys=keys_dir)
    assert rc == 0, err
    report = json.loads(out)
    assert report["result"] == "confirmed" and report["active_version"] == "1.1.0"
    assert report["intervals_missed"] == 0 and report["energy_conserved"]
    # On the emulated Pico the clock differs from the host's by the emulator's backlog.
    assert [d for d in report["discrepancies"] if board.kind == "sim" or "clock" not in d] == []
    item = nan_item(report["health"])
    assert item["ok"] and item["severity"] == "critical" and item["message"] == f"mesh network 0x{NETWORK_ID:04x}: attached"

    nan = collector(board)
    assert nan["profile"] == "mesh" and nan["attach"] == {"admitted": 1, "refused": 0}
    st = cli_json(port, "status")                       # the host tools unchanged, the link new
    after = collector(board)
    assert st["active_version"] == "1.1.0" and st["confirmed"]
    assert after["mesh"]["packets_from_meter"] > nan["mesh"]["packets_from_meter"]
    assert after["mesh"]["packets_to_meter"] > nan["mesh"]["packets_to_meter"]
    assert after["serial"] == nan["serial"]             # nothing went over the old profile
    assert after["mesh"]["dropped"] == 0

    board.power_cycle()                                 # back in the old profile until it attaches again
    assert cli_json(port, "status")["boot_reason"] == "power-on"
    again = collector(board)
    assert again["profile"] == "mesh" and again["attach"]["admitted"] == 2
    # A request sent while it booted went out in the old profile and was lost; it answered over the new one.
    assert again["serial"]["bytes_from_meter"] == nan["serial"]["bytes_from_meter"]
    board.wait_intervals(len(cli_json(port, "read", "intervals")) + 1)
    assert_continuous_and_true(cli_json(port, "read", "intervals"), board.seed)


def test_nan_driver_whose_link_does_not_come_up_is_reverted_and_the_meter_stays_reachable(board, mesh_images):
    board.wait_intervals(2)
    m = board.meter()
    upload(m, mesh_images["unadmitted"])
    boots = board.state()["boots"]
    m.activate("now", ack="immediate")
    board.wait_boots(boots + 1)
    time.sleep(2)                                       # the trial image is up, asking to attach
    with pytest.raises(TransportError):               # unreachable: the collector does not admit it
        m.link.request(P.PING, b"anyone?", timeout_s=1, retries=0)
    assert board.state()["boots"] == boots + 1          # ... while it was on trial
    st = m.wait_until(lambda s: s.get("update", {}).get("result") == "reverted" and s.get("health") is not None, 60)
    assert st is not None, "the meter did not come back over the old NAN"
    assert st["active_version"] == "1.0.0" and st["confirmed"] and st["boot_reason"] == "revert"
    assert st["update"]["reason"].startswith(
        "critical health check failed: nan: mesh network 0x0bad: no collector admitted the meter")
    assert st["update"]["image_id"] in st["rejected"]   # never tried again (FR13)
    assert nan_item(st["health"])["ok"]                 # the old driver's link, the one that reached us
    nan = collector(board)
    assert nan["profile"] == "serial" and nan["attach"]["refused"] >= 1 and nan["attach"]["admitted"] == 0

    alarms = revert_alarms(m)
    assert len(alarms) == 1 and alarms[0]["message"].startswith("1.1.0 reverted (health): ")
    pushed = []
    deadline = time.monotonic() + 20
    while not pushed and time.monotonic() < deadline:
        pushed = [p for p in m.listen(1) if p["code"] == FIRMWARE_REVERTED]
    assert pushed, "the revert's alarm was not pushed"
    board.wait_intervals(len(m.read_intervals()) + 1)
    assert_continuous_and_true(m.read_intervals(), board.seed)  # no interval lost to the bad driver
    m.link.close()
