"""No open command writes flash or leaves code resident (#11 class 4). Anyone on the link may
read; a read must cost the meter nothing it keeps: no flash operation (wear, and on a Pico a
stall that loses UART bytes) and no module left on the heap. Counted by the board's own flash
model, around each open command in turn; an interval close in between (the one flash writer a
quiet meter has) makes that command go again."""
import json
import time

import pytest

from hil.pytest_plugin import SEED, start_dut, MeterBoard
from meterfw import protocol as P

INTERVAL_S = 60  # few interval closes to step around


def _reads(meter):
    link = meter.link
    return {
        "ping": lambda: link.request(P.PING, b"echo"),
        "status": meter.status,
        "intervals": meter.read_intervals,
        "events": meter.read_events,
        "registers": meter.read_registers,
        "state": meter.read_state,
        "health": lambda: meter.health(with_time=True),
        "time": meter.time_get,
        "alarms": meter.read_alarms,
        "display": meter.display,
        "update state": meter.update_state,
    }


def _modules(meter) -> int:
    return meter.status()["heap"]["modules"]


def _quiet(board, meter) -> None:
    """Booted, its post-boot check done and its flash at rest for a second."""
    st = meter.wait_until(lambda s: s.get("health") is not None, 30)
    assert st is not None, board.console()[-2000:]
    ops, since = board.flash_ops(), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.2)
        if board.flash_ops() != ops:
            ops, since = board.flash_ops(), time.monotonic()


def _cost(board, meter, read) -> tuple[int, int]:
    """(flash operations, modules left) that one call of `read` costs, stepping around an
    interval close."""
    for _ in range(3):
        closes = meter.status()["metering"]["closes"]
        modules = _modules(meter)
        ops = board.flash_ops()
        read()
        spent = board.flash_ops() - ops
        if meter.status()["metering"]["closes"] == closes:
            return spent, _modules(meter) - modules
    raise AssertionError("an interval closed around every try")


@pytest.fixture
def quiet_meter(sim_factory, images, keys_dir, dut):
    if dut.kind != "sim":
        pytest.skip("the flash model's counter is the sim's and the emulated Pico's; this runs on the sim")
    board = MeterBoard(start_dut(sim_factory, dut, images["v1"], keys_dir, INTERVAL_S, SEED), SEED, INTERVAL_S,
                       keys_dir, dut.kind)
    meter = board.meter()
    _quiet(board, meter)
    yield board, meter
    meter.link.close()


def test_no_open_command_writes_flash_or_leaves_code_resident(quiet_meter):
    board, meter = quiet_meter
    costs = {name: _cost(board, meter, read) for name, read in _reads(meter).items()}
    assert {name: c for name, c in costs.items() if c != (0, 0)} == {}, json.dumps(costs)
    # The same count sees what a privileged command changes: the notice is stored, and the
    # update agent it needs stays loaded for the update that follows.
    flash, modules = _cost(board, meter, lambda: meter.notice({"version": "1.1.0", "size": 1000}))
    assert flash > 0 and modules > 0
    # With the agent loaded, the update state comes from it: still nothing written.
    assert _cost(board, meter, meter.update_state) == (0, 0)
