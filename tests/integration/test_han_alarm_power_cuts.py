"""A power cut at the flash writes of a HAN join's outcome (every other one, some torn) neither
loses nor doubles its HAN_ENROLLMENT alarm: after the cut the meter tells the outcome it stored,
or, when it stored none, that the join was cut short by the restart; either way the host gets
one alarm for that join. Apart from test_han_new_tech.py so the suite's workers can run the two
at once."""
from hil.pytest_plugin import SEED, MeterBoard, start_dut
from meterfw import protocol as P
from test_han import CODE, rig, row
from test_revert_alarm_power_cuts import _quiet

EUI = "00124B0001A2C100"


def test_a_power_cut_at_any_write_of_a_join_outcome_neither_loses_nor_doubles_its_alarm(sim_factory, images,
                                                                                          keys_dir, dut):
    # Intervals of 900 s: no close inside a run, so a cut point is the same operation every time.
    board = MeterBoard(start_dut(sim_factory, dut, images["v1"], keys_dir, 900, SEED, {"han": "ok"}), SEED, 900,
                       keys_dir, dut.kind)
    board.needs("cut", "power", "files")
    if dut.kind != "sim":
        return  # the simulated HAN medium is the sim rig's (needs() skips a real board already)
    m = board.meter()
    _quiet(board, m)
    board.power_off()
    template = (board.dir / "flash.img").read_bytes()  # booted, nothing enrolled; no device on the premises

    def run(cut=None):
        board.power_off()
        (board.dir / "flash.img").write_bytes(template)
        (board.dir / "han.json").unlink(missing_ok=True)
        board.power_on()
        assert m.wait_until(lambda s: s.get("health") is not None, 30) is not None
        m.han_join(EUI, CODE, 20)
        at = _quiet(board, m)  # the window is open: the device is not there yet
        if cut is not None:
            board.cut_at(*cut)
        rig(board, "add", "--eui64", EUI, "--install-code", CODE, "--kind", "thermostat")  # switched on: it joins
        told = m.wait_until(lambda _: (row(m, EUI)["outcome"] or {}).get("told"), 40)  # after a cut: by the next boot
        assert told is not None, row(m, EUI)
        return at

    at = run()  # the dry run: where the outcome's writes lie
    end = _quiet(board, m)
    assert [a["value"] for a in m.read_alarms() if a["code"] == P.ALARM_CODES["HAN_ENROLLMENT"]] == [0]
    # Every other write (each record's save is several), and some torn: a lean sweep.
    points = [(n, False) for n in range(1, end - at + 1, 2)] + [(n, True) for n in range(2, end - at + 1, 4)]
    assert len(points) >= 10
    for n, torn in points:
        cuts = board.state()["power_cuts"]
        run((n, torn))
        assert board.state()["power_cuts"] == cuts + 1, f"no cut at operation {n}"
        alarms = [a for a in m.read_alarms() if a["code"] == P.ALARM_CODES["HAN_ENROLLMENT"]]
        assert len(alarms) == 1, f"cut at operation {n} (torn: {torn}): {alarms}"
        outcome = row(m, EUI)["outcome"]
        assert alarms[0]["value"] == outcome["stage"] and outcome["stage"] in (
            P.HAN_STAGES.index("joined"), P.HAN_STAGES.index("meter restarted in the window")), outcome
    m.link.close()
