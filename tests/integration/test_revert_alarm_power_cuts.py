"""A power cut at any flash write of the boot that reverts a crashing image neither loses nor
doubles its FIRMWARE_REVERTED alarm (FR15). Apart from test_revert_alarms.py so the suite's
workers can run the two at once: this sweep boots the meter a few dozen times."""
import time

from test_revert_alarms import CAUSES, revert_alarms, upload, wait_settled


def _quiet(board, meter) -> int:
    """Flash operations so far, once the meter has booted and its flash rests."""
    assert meter.wait_until(lambda s: s.get("health") is not None, 30) is not None
    ops = board.flash_ops()
    while True:
        time.sleep(1.5)  # longer than any pause within a boot's own writes but the settle's
        now = board.flash_ops()
        if now == ops:
            return ops
        ops = now


def test_a_power_cut_at_any_write_of_the_reverting_boot_neither_loses_nor_doubles_the_alarm(
        sim_factory, images, variant_images, keys_dir, dut):
    # Intervals of 900 s: no close inside the run, so each run's flash operations are the same
    # ones and a cut point is the same operation every time (as in hil/powercut.py).
    from hil.pytest_plugin import SEED, MeterBoard, start_dut

    board = MeterBoard(start_dut(sim_factory, dut, images["v1"], keys_dir, 900, SEED), SEED, 900, keys_dir, dut.kind)
    board.needs("cut", "power", "files")
    m = board.meter()
    upload(m, variant_images["crash_at_import"])
    _quiet(board, m)
    board.power_off()
    template = (board.dir / "flash.img").read_bytes()  # v1 with the crashing image verified

    def run(cut=None):
        board.power_off()
        (board.dir / "flash.img").write_bytes(template)
        board.power_on()
        at = _quiet(board, m)
        if cut is not None:
            board.cut_at(*cut)
        m.activate("now", ack="immediate")
        wait_settled(m)
        return at

    at = run()  # the dry run: where the reverting boot's own writes lie
    board.flash_ops()  # (brings the board's state up to date)
    st = board.state()
    start = st["boot_ops"][-1]
    settle = min(op for op, _ in st["pauses"] if op > start)  # its health check's front-end settle
    assert len(revert_alarms(m)) == 1
    points = [(n, False) for n in range(start - at + 1, settle - at + 1)]
    points += [(n, True) for n in range(start - at + 1, settle - at + 1, 2)]
    for n, torn in points:
        cuts = board.state()["power_cuts"]
        run((n, torn))
        assert board.state()["power_cuts"] == cuts + 1, f"no cut at operation {n}"
        alarms = revert_alarms(m)
        assert len(alarms) == 1, f"cut at operation {n} (torn: {torn}): {alarms}"
        assert alarms[0]["value"] == CAUSES.index("crash")
    m.link.close()
