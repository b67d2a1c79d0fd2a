"""A sample of the power-cut sweep on the emulated Pico: the stock MicroPython firmware, whose
flash erases and programs go through the real rp2 flash driver and the boot ROM, counted and cut
(cleanly, or torn half-way) by the emulator. The same checks as the sim's sweep
(tests/integration/test_powercut.py); `python -m hil.powercut --board pico` runs every point.
Without a firmware it skips, saying how to get one."""
import pytest

from hil.powercut import Sweep

# The emulator is slow (a point takes ~30 s of wall time, the templates a few minutes): one point
# in the middle of each phase that writes the most through the chip's flash driver, clean and torn
# in turn. The sim's sweep (make powercut) cuts at every operation of every phase; verify and the
# trial write a few operations each (the update state, the boot record), as in the activate chain.
# The bootloader's activation: its install into the other copy, torn half-way, through the chip's
# own flash driver.
TIMEOUT_S = 600
POINTS = {"download": False, "activate": True, "confirm": False, "revert": True, "recovery-upload": False,
          "bootloader-activate": True}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, pico_dut):
    s = Sweep(tmp_path_factory.mktemp("powercut-pico"), board="pico", firmware=pico_dut.firmware)
    try:
        s.prepare()
        yield s
    finally:
        s.close()


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("phase", POINTS)
def test_pico_power_cut_in_the_middle_of_each_phase_of_an_upgrade(sweep, phase):
    n = sweep.count(phase)
    assert n >= 3, "a phase this short means the emulator is not counting the flash operations"
    o = sweep.run_point(phase, max(1, n // 2), POINTS[phase])
    assert o.cut_happened
    assert (o.violations, o.console) == ([], "")
    assert o.version in ("1.0.0", "1.1.0")
