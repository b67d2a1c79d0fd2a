"""A load profile on the emulated Pico: its ADE7953 on SPI counts the premises' load from the
same function as the sim's front-end and the host's twin (hil/metrology.py). A vacant premises
draws nothing for as long as it stays so; a new image on it is judged healthy and confirmed (its
critical `metrology` item used to call a front-end that does not advance a fault, and revert)."""
import json
import subprocess
import sys
from pathlib import Path

from hil.pytest_plugin import PICO_TIMEOUT_S
from meterfw.upgrade import continuity

MFW = str(Path(sys.executable).parent / "meterfw")


def cli_json(board, *args):
    proc = subprocess.run([MFW, "--port", board.port, "--keys", str(board.keys_dir), "--timeout", str(PICO_TIMEOUT_S),
                           *args, "--json"], capture_output=True, text=True, timeout=600)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_pico_on_a_vacant_premises_upgrades_and_stays_healthy(make_pico, pico_images):
    board = make_pico(load="vacant")
    board.wait_intervals(2)
    rc, report = cli_json(board, "upgrade", str(pico_images["v2"]))
    assert rc == 0 and report["result"] == "confirmed", report
    assert report["intervals_missed"] == 0 and report["energy_conserved"]
    rc, st = cli_json(board, "status")
    assert (st["active_version"], st["confirmed"]) == ("1.1.0", True) and all(h["ok"] for h in st["health"])
    rc, health = cli_json(board, "health", "--no-time")  # the host's clock runs ahead by the backlog
    metrology = [i for i in health["items"] if i["check"] == "metrology"][0]
    assert rc == 0 and metrology["status"] == "pass" and metrology["value"] == 0, health
    records = board.wait_intervals(len(cli_json(board, "read", "intervals")[1]) + 1)
    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    for r in records:  # the Pico's front-end counts delivered energy only
        assert r["energy_mwh"] == board.true_energies(r["start"], r["start"] + r["duration_s"])[0] == 0, r
        assert r["register_mwh"] == 0
