"""Anti-rollback holds on every path: confirming an image that raises the security floor drops a
revert target below it (status and the event log say so), and neither a revert nor the boot
selection will run an image below the floor."""
import pytest

from hil.flashfs import mounted
from hil.pytest_plugin import _build
from meterfw.errors import CommandError
from meterfw.paths import FIRMWARE


@pytest.fixture(scope="module")
def secure_v2(tmp_path_factory, keys_dir, dut):
    path = tmp_path_factory.mktemp("secure") / "v2-sv5.mfw"
    path.write_bytes(_build(FIRMWARE, dut.board, "1.1.0", keys_dir, security_version=5))
    return path


def test_raising_the_floor_drops_a_revert_target_below_it_and_boot_refuses_it(board, images, secure_v2,
                                                                                 sim_factory):
    board.needs("files")
    meter = board.meter()
    meter.upload(secure_v2.read_bytes())
    meter.verify()
    meter.activate("now")
    st = meter.wait_until(lambda s: s["update"].get("result") == "confirmed" and not s["trial"], 60)
    assert st is not None and st["security_floor"] == 5, board.console()[-2000:]
    assert st["slots"]["a"]["version"] == "1.0.0"  # still on flash, but no longer a revert target
    names = [e.get("name") for e in meter.read_events()]
    assert "revert target dropped: below the security floor" in names, names
    with pytest.raises(CommandError) as e:
        meter.revert()
    assert e.value.code == "no_previous"
    with pytest.raises(CommandError) as e:
        meter.upload(images["v1"].read_bytes())  # security version 0 < 5
    assert e.value.code == "rollback"
    meter.link.close()

    # Whatever puts an old image in the active slot, the boot selection will not run it.
    board.sim.stop()
    with mounted(board.sim.dir / "flash.img") as fs:
        with fs.open("/slots/b.mfw", "wb") as f:
            f.write(images["v1"].read_bytes())
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port
    meter = board.meter()
    st = meter.wait_until(lambda s: True, 30)
    meter.link.close()
    assert st is not None and st.get("mode") == "recovery", st
    assert "below the floor 5" in st["recovery_reason"], st
