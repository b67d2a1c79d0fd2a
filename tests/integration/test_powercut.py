"""A sample of the power-cut sweep (`make powercut` runs every point and prints the table)."""
import pytest

from hil.powercut import PHASES, Sweep, points

SAMPLE = 4  # per phase, spread over the phase, clean and torn cuts alternating


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    s = Sweep(tmp_path_factory.mktemp("powercut"))
    s.prepare()
    return s


@pytest.mark.parametrize("phase", PHASES)
def test_power_cut_at_flash_writes_during_activate_trial_confirm_and_revert(sweep, phase):
    n = sweep.count(phase)
    assert n > 10, "a phase this short means the flash model is not counting"
    outcomes = [sweep.run_point(phase, cut_at, torn) for cut_at, torn in points(n, SAMPLE)]
    assert all(o.cut_happened for o in outcomes)
    assert [(o.cut_at, o.torn, o.violations) for o in outcomes if o.violations] == []
    assert {o.version for o in outcomes} <= {"1.0.0", "1.1.0"}
