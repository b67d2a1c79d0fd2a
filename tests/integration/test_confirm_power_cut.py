"""Power lost between the two records of a trial's confirmation: the boot control's (stored
first) and the update state's. The power-cut sweep found it (a cut at the update state's write,
or the event's before it): the meter ran confirmed, but its update state said trial for good."""
import json

from hil.flashfs import mounted


def test_update_state_confirmed_after_power_lost_between_boot_control_and_update_state(board, images,
                                                                                       sim_factory):
    board.needs("files")  # the state is set up in the sim's flash.img
    meter = board.meter()
    meter.upload(images["v2"].read_bytes())
    meter.verify()
    meter.activate("now")
    st = meter.wait_until(lambda s: s["update"].get("result") == "confirmed" and not s["trial"], 60)
    meter.link.close()
    assert st is not None and st["active_version"] == "1.1.0" and st["confirmed"], board.console()[-2000:]

    board.sim.stop()
    with mounted(board.sim.dir / "flash.img") as fs:
        with fs.open("/data/update.json", "rb") as f:
            update = json.loads(f.read())
        update["result"] = "trial"  # as it stood when the power went: boot control confirmed, this not
        with fs.open("/data/update.json", "wb") as f:
            f.write(json.dumps(update).encode())
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port

    meter = board.meter()
    st = meter.wait_until(lambda s: s.get("health") is not None, 30)
    meter.link.close()
    assert st is not None, board.console()[-2000:]
    assert (st["active_version"], st["confirmed"], st["trial"]) == ("1.1.0", True, False)
    assert st["update"]["result"] == "confirmed"
