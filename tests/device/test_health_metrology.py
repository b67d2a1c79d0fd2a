"""The health check's `metrology` item under MicroPython, on a front-end the test scripts: it
judges what a real meter on the premises would show. No energy at all (a vacant premises), export
only (rooftop PV at noon) and a load near the meter's rating are readings; a front-end that counts
backwards or faster than any service delivers is a fault, and so is a chip that does not answer on
its bus (which would read no energy too)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
sys.path.insert(0, ARGS[0] + "/firmware")
import asyncio, health
class App:
    pass
class Board:
    def __init__(self, fault, steps):
        self.fault = fault
        self.steps = list(steps)
    def metrology_fault(self):
        return self.fault
    def energies_mwh(self):
        return self.steps.pop(0)
async def main():
    out = {}
    for name, steps in READINGS.items():
        app = App()
        app.board = Board("front-end does not answer on its bus" if name == "no_chip" else None,
                          [tuple(s) for s in steps])
        out[name] = list(await health._metrology(app, {}))
    return out
print(json.dumps(asyncio.run(main())))
"""

# (delivered, received) before and after the item's 1.1 s wait, in mWh
READINGS = {
    "vacant": [(5000, 700), (5000, 700)],                    # nothing flows, either way
    "solar_noon": [(9000, 4000), (9000, 4900)],              # export only: 1.6 kW out
    "near_rating": [(10**9, 0), (10**9 + 13300, 0)],         # 23.9 kW for 2 whole seconds
    "backwards": [(9000, 4000), (8999, 4000)],
    "received_backwards": [(9000, 4000), (9000, 3000)],
    "impossible": [(0, 0), (100000, 0)],                     # 180 kW over 2 s: no service gives that
    "no_chip": [(0, 0), (0, 0)],                             # reads like vacant, but the chip is gone
}


def test_metrology_item_judges_what_a_real_meter_on_the_premises_would_show(run_mpy):
    out = run_mpy("READINGS = %r\n" % READINGS + SCRIPT, ROOT, heap="256k")
    assert out["vacant"] == ["pass", "no energy flowed: no load on the premises", 0]
    assert out["solar_noon"] == ["pass", None, 900]
    assert out["near_rating"] == ["pass", None, 13300]
    assert out["backwards"][:2] == ["fail", "front-end reading went backwards"]
    assert out["received_backwards"][:2] == ["fail", "front-end reading went backwards"]
    assert out["impossible"][0] == "fail" and "implausible" in out["impossible"][1]
    assert out["no_chip"] == ["fail", "front-end does not answer on its bus", None]
