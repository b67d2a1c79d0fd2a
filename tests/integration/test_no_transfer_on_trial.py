"""No transfer while an image is on trial: the inactive slot holds the image a failed trial
reverts to, and a download would overwrite it. An initiate during a trial is refused with the
reason, nothing changes, and once the trial has its verdict the download goes ahead."""
import pytest

from hil.pytest_plugin import build_variants
from meterfw.errors import CommandError


@pytest.fixture(scope="module")
def slow(tmp_path_factory, keys_dir, dut):
    return build_variants(tmp_path_factory.mktemp("slow"), dut.board, keys_dir, ["slow_health"])["slow_health"]


def test_an_initiate_during_a_trial_is_refused_and_the_revert_target_kept(board, images, slow):
    meter = board.meter()
    meter.upload(slow.read_bytes())
    meter.verify()
    meter.activate("now")
    st = meter.wait_until(lambda s: s.get("trial") and s.get("boot_reason") == "activate", 30)
    assert st is not None, board.console()[-2000:]
    with pytest.raises(CommandError) as e:
        meter.upload(images["v1"].read_bytes())  # into the slot that holds the revert target
    assert e.value.code == "on_trial" and "1.1.0 is on trial" in str(e.value)
    st = meter.status()
    assert st["trial"] and st["slots"]["a"]["version"] == "1.0.0" and st["can_revert"]
    # The verdict comes (the slow check passes): then a download may use the slot.
    st = meter.wait_until(lambda s: s["update"].get("result") == "confirmed" and not s["trial"], 60)
    assert st is not None, {k: v for k, v in meter.status().items() if k in ("trial", "confirmed", "update", "health")}
    meter.upload(images["v2"].read_bytes())
    assert meter.status()["update"]["status"] == 1  # initiated
    meter.link.close()
