"""The meter state's one table of fields (firmware/state_schema.py) against what is stored, shown
and checked: the layout it gives is the one existing meters' records are made of, every field it
names is in the JSON view and round-trips through a change, and every range it states is the one
a change is held to. Run under MicroPython, as on a meter."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every setting changed, each to a bound of its range where it has one.
EVERY_SETTING = {
    "multiplier": 40, "limiting": {"enabled": True, "limit_w": 9000},
    "pricing_events": [{"start_s": 1800003600, "end_s": 1800007200, "tier": 3}],
    "grid_events": [{"start_s": 1800010000, "end_s": 1800011000, "kind": "cycle", "level_pct": 50}],
    "nem": {"enabled": True, "channels": ["delivered", "received", "net"]},
    "load_control": {"state": "shed", "level_pct": 40}, "dg_control": {"state": "disconnected", "limit_w": 5},
    "pulse_output": {"enabled": True, "wh_per_pulse": 65535},
    "power_quality": {"nominal_v": 1000, "sag_pct": 1, "swell_pct": 99}, "reporting": {"immediate": [150, 151, 155]},
    "prepayment": {"enabled": True, "credit_wh": -2000000000, "emergency_wh": 2000000000, "low_credit_wh": 7},
    "health_severity": {"han": "info", "metrology": "important", "flash": "critical"},
}

PRELUDE = """
sys.path.insert(0, ARGS[0] + "/firmware")
import meter_state, state_edit, state_json, state_schema
from meter_state import MeterState
from bootloader.api import CommandError
LIFETIME_MWH = 1234567
def refused(st, change):
    try:
        state_edit.update(st, change, LIFETIME_MWH)
    except CommandError as e:
        return list(e.args)  # code, message
    return None
EVERY_SETTING = json.loads(%r)
""" % json.dumps(EVERY_SETTING)


def test_meter_state_schema_gives_the_stored_layout_byte_for_byte(run_mpy):
    # The layout, the factory record and a record with every field set, as the firmware before
    # the schema stored them: a meter's state file must still load, and its hash stay the same.
    out = run_mpy(PRELUDE + """
s = MeterState("state")
factory_hash = s.hash()
s.save = lambda: None
h = state_edit.update(s, EVERY_SETTING, LIFETIME_MWH)
again = MeterState("state")  # the factory record, as saved on the first start
print(json.dumps({"fixed": meter_state.FIXED, "size": meter_state.FIXED_SIZE, "factory_hash": factory_hash,
                  "factory": meter_state.factory(), "reloaded": again.fixed, "hash": h, "body": s.body.hex()}))
""", ROOT, heap="512k")
    assert out["fixed"] == "<BBIBBBIBBBHHHBBBiIIqIIBB" and out["size"] == 55
    assert out["factory"] == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 230, 10, 10, 0, 0, 0, 0, 0, 0x7F, 0, 0, 0]
    assert out["reloaded"] == out["factory"]
    assert out["factory_hash"] == "38b9802a6fd6901a93c271ede59bb91219775b14124683b5d68fb19a49ab4d3d"
    assert out["hash"] == "18aba2edbf298614091e9a2bda02d5863ce531a735019745e5f71985f64356dc"
    assert out["body"] == ("01012823000001280205000000010701ffff2800e803016301006cca88009435770700000087d612"
                           "00000000008002000002c01000010110e0496b20ee496b0310f9496bf8fc496b0132")


def test_every_meter_state_field_is_shown_and_round_trips_through_a_change(run_mpy):
    out = run_mpy(PRELUDE + """
s = MeterState("state")
s.save = lambda: None
state_edit.update(s, EVERY_SETTING, LIFETIME_MWH)
view = state_json.to_dict(s)
missing = []
for name, code, value, section, key, kind, arg in state_schema.FIELDS:
    if section is not None and not (section in view and (key is None or key in view[section])):
        missing.append(name)
# the view, given back as a change to a factory state, makes the same record
fresh = MeterState("fresh")
fresh.save = lambda: None
change = {k: v for k, v in view.items() if k not in ("version", "seq", "hash", "relay")}
state_edit.update(fresh, change, LIFETIME_MWH)
print(json.dumps({"missing": missing, "keys": sorted(view), "same": fresh.body == s.body,
                  "sections": sorted(set(r[3] for r in state_schema.FIELDS if r[3])),
                  "hidden": [r[0] for r in state_schema.FIELDS if r[3] is None],
                  "names": list(meter_state.NAMES), "table": [r[0] for r in state_schema.FIELDS],
                  "get": [s.get(n) for n in meter_state.NAMES], "fixed": s.fixed}))
""", ROOT, heap="512k")
    assert out["missing"] == []
    assert out["keys"] == sorted(out["sections"] + ["version", "seq", "hash", "pricing_events", "grid_events"])
    assert out["hidden"] == ["credit_base_mwh", "n_pricing", "n_grid"]
    assert out["same"]
    assert out["names"] == out["table"] and out["get"] == out["fixed"]


def test_every_meter_state_range_in_the_schema_is_what_a_change_is_held_to(run_mpy):
    # Each INT field takes its bounds and refuses one past them (its struct code holds both);
    # each BOOL takes true and false only; each ONE_OF its names only. Stored, then reloaded.
    out = run_mpy(PRELUDE + """
S = state_schema
s = MeterState("state")
wrong, took = [], 0
def change(section, key, v):
    return {section: v} if key is None else {section: {key: v}}
def expect_stored(name, section, key, v, stored):
    global took
    if refused(s, change(section, key, v)) is not None or MeterState("state").get(name) != stored:
        wrong.append([name, v])
    took += 1
def expect_refused(name, section, key, v, message):
    r = refused(s, change(section, key, v))
    if r != ["bad_request", "meter state: " + message]:
        wrong.append([name, v, r])
# a section holding a SET or EACH is checked whole, with messages of its own (state_lists.py)
own = set(r[3] for r in S.FIELDS if r[5] in (S.SET, S.EACH))
for name, code, value, section, key, kind, arg in S.FIELDS:
    if section in (None, "relay") or section in own:
        continue
    what = section if key is None else section + "." + key
    if kind == S.INT:
        lo, hi = arg
        for v in (lo, hi):
            expect_stored(name, section, key, v, v)
        for v in (lo - 1, hi + 1, True, "1"):
            expect_refused(name, section, key, v, "%s must be a whole number from %d to %d" % (what, lo, hi))
    elif kind == S.BOOL:
        for v in (True, False):
            expect_stored(name, section, key, v, int(v))
        expect_refused(name, section, key, 1, what + " must be true or false")
    else:
        for i, v in enumerate(arg):
            expect_stored(name, section, key, v, i)
        expect_refused(name, section, key, "bogus", "%s must be one of %s" % (what, ", ".join(arg)))
relay = refused(s, {"relay": {"connected": False}})
state_edit.set_relay(s, False)
print(json.dumps({"wrong": wrong, "took": took, "relay": relay, "relay_now": MeterState("state").relay_connected}))
""", ROOT, heap="512k")
    assert out["wrong"] == []
    assert out["took"] == 2 * 11 + 2 * 3 + 5   # 11 ranges, 3 switches, 5 names in 2 choices
    assert out["relay"] == ["bad_request", "meter state: the relay moves only by the relay command"]
    assert out["relay_now"] is False


def test_no_file_reads_the_meter_state_by_a_copied_index():
    # Only meter_state.py indexes the stored fields; everyone else names them (MeterState.get).
    for path in sorted((ROOT / "firmware").glob("*.py")) + sorted((ROOT / "tests").rglob("*.py")):
        if path.name != "meter_state.py":
            assert not re.search(r"\.fixed\[", path.read_text()), path.relative_to(ROOT)
