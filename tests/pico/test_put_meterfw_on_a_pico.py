"""The two ways onto a Pico, each ending in a live upgrade, on the emulated Pico with the stock
firmware: a UF2 made by `meterfw uf2` dragged onto a blank chip, and `meterfw provision` through
the REPL of a Pico that runs MicroPython only."""
import json
import subprocess
import sys
from pathlib import Path

from hil.pytest_plugin import PICO_TIMEOUT_S, MeterBoard

MFW = str(Path(sys.executable).parent / "meterfw")


def run_json(*args):
    proc = subprocess.run([MFW, *map(str, args), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def upgrade_now(board, image) -> dict:
    return run_json("--port", board.port, "--keys", board.keys_dir, "--timeout", PICO_TIMEOUT_S, "upgrade", image,
                    "--when", "now")


def wait_meter(board, serial: str) -> dict:
    meter = board.meter()
    try:
        st = meter.wait_until(lambda s: s.get("health") is not None, 120)
    finally:
        meter.link.close()
    assert st is not None, board.console()[-2000:]
    assert (st["board"], st["serial"], st["active_version"], st["confirmed"]) == ("pico", serial, "1.0.0", True)
    return st


def test_meter_uf2_boots_a_blank_pico_that_then_upgrades(sim_factory, pico_dut, pico_images, keys_dir, tmp_path):
    uf2 = tmp_path / "meter.uf2"
    made = run_json("uf2", "--board", "pico", "--firmware", pico_dut.firmware, "--image", pico_images["v1"],
                    "--keys", keys_dir, "--serial", "PICO-UF2-1", "-o", uf2)
    assert made["serial"] == "PICO-UF2-1" and uf2.stat().st_size == made["uf2_bytes"]
    # Exactly that file, dragged onto a Pico whose flash is blank: nothing else is provisioned.
    sim = sim_factory(board="pico", firmware=uf2)
    board = MeterBoard(sim, 1, 900, keys_dir, "pico")
    wait_meter(board, "PICO-UF2-1")
    report = upgrade_now(board, pico_images["v2"])
    assert report["result"] == "confirmed" and report["to_version"] == "1.1.0", report
    assert report["intervals_missed"] == 0 and report["energy_conserved"]


def test_provision_through_the_repl_then_upgrade(sim_factory, pico_dut, pico_images, keys_dir):
    # A Pico that runs the stock firmware only: its USB CDC port is MicroPython's REPL.
    sim = sim_factory(board="pico", firmware=pico_dut.firmware)
    assert sim.usb_port
    out = run_json("provision", "--port", sim.usb_port, "--board", "pico", "--image", pico_images["v1"],
                   "--keys", keys_dir, "--serial", "PICO-REPL-1")
    assert out["verified"] and out["serial"] == "PICO-REPL-1"
    sim.wait_boots(2, timeout=60)  # the reset at the end of provisioning starts the meter
    board = MeterBoard(sim, 1, 900, keys_dir, "pico")
    wait_meter(board, "PICO-REPL-1")
    report = upgrade_now(board, pico_images["v2"])
    assert report["result"] == "confirmed" and report["to_version"] == "1.1.0", report
