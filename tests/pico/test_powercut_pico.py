"""A sample of the power-cut sweep on the emulated Pico: the stock MicroPython firmware, whose
flash erases and programs go through the real rp2 flash driver and the boot ROM, counted and cut
(cleanly, or torn half-way) by the emulator. The same checks as the sim's sweep
(tests/integration/test_powercut.py); `python -m hil.powercut --board pico` runs every point.
Without a firmware it skips, saying how to get one."""
import pytest

from hil.powercut import PHASES, Sweep

# The emulator is slow (a point takes ~30 s of wall time, the templates a few minutes), so two
# points per phase: one clean cut in the first half of the phase, one torn in the second.
TIMEOUT_S = 600


def sample(n_ops: int) -> list[tuple[int, bool]]:
    return [(max(1, n_ops // 3), False), (max(1, 2 * n_ops // 3 + 1), True)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, pico_dut):
    s = Sweep(tmp_path_factory.mktemp("powercut-pico"), board="pico", firmware=pico_dut.firmware)
    try:
        s.prepare()
        yield s
    finally:
        s.close()


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("phase", PHASES)
def test_pico_power_cut_at_flash_writes_in_every_phase_of_an_upgrade(sweep, phase):
    n = sweep.count(phase)
    assert n > 5, "a phase this short means the emulator is not counting the flash operations"
    outcomes = [sweep.run_point(phase, cut_at, torn) for cut_at, torn in sample(n)]
    assert all(o.cut_happened for o in outcomes)
    assert [(o.cut_at, o.torn, o.violations, o.console) for o in outcomes if o.violations] == []
    assert {o.version for o in outcomes} <= {"1.0.0", "1.1.0"}
