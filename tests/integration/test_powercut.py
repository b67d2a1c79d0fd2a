"""A sample of the power-cut sweep (`make powercut` runs every point and prints the table): every
phase, one clean cut and one torn, and the phase counts that must agree run after run."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from hil.powercut import PHASES, UPLOADS, Sweep, points

SAMPLE = 2  # per phase: a clean cut at its first operation, a torn one half-way


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    s = Sweep(tmp_path_factory.mktemp("powercut"), jobs=2)
    try:
        s.prepare()
        yield s
    finally:
        s.close()


def test_every_phase_counts_the_same_flash_operations_twice(sweep):
    first = {phase: sweep.count(phase) for phase in PHASES}
    for phase in ("download", "delta-download", "verify", "activate", "revert", "recovery-upload",
                  "bootloader-download", "bootloader-activate"):  # activate: trial, confirm too
        sweep.count(phase, again=True)
    assert {phase: sweep.counts[phase] for phase in PHASES} == first
    assert all(n > 5 for n in first.values()), f"a phase this short means the flash is not counted: {first}"


@pytest.mark.parametrize("phase", PHASES)
def test_power_cut_at_flash_writes_in_every_phase_of_an_upgrade(sweep, phase):
    n = sweep.count(phase)
    with ThreadPoolExecutor(sweep.jobs) as pool:
        outcomes = list(pool.map(lambda pt: sweep.run_point(phase, *pt), points(n, SAMPLE)))
    assert [(o.cut_at, o.torn) for o in outcomes] == [(1, False), (1 + n // 2, True)]
    assert [(o.cut_at, o.torn, o.violations, o.console) for o in outcomes if o.violations] == []
    assert all(o.cut_happened for o in outcomes)
    if phase == "recovery-upload":
        assert {o.version for o in outcomes} == {"1.1.0"}  # the recovery console's slot a, unchanged
    else:
        assert {o.version for o in outcomes} <= {"1.0.0", "1.1.0"}
    if phase in UPLOADS:  # half-way through, the meter kept the transfer and the host resumed it
        assert outcomes[1].resumed_from_block is not None
