"""The host's twin of the simulated metrology front-end, and the premises' load profiles.

Energy per whole second is a pure function of the seed, the load profile and the second, so the
rig knows the true energy of any interval without asking the meter, and can check the meter's
arithmetic. Two channels, as on a net (NEM) meter: delivered to the customer, and received from
them. The integer functions are the sim front-end's own (boards/sim/metrology.py, plain Python
that both MicroPython and CPython run); hil/pico/parts.mjs has them in JavaScript for the
emulated Pico, and tests/integration/test_load_profiles.py holds the three to the same numbers.

A profile is chosen per meter (`meterfw-sim start --load NAME[@+HH:MM]`). Its daily curves run
on the premises' local time of day: UTC, or UTC plus the offset after `@` (`solar@+10:00`: a
premises where it is 10:00 at 00:00 UTC), so a test can put a premises at noon whenever it runs.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_sim_metrology", Path(__file__).resolve().parent.parent / "boards" / "sim" / "metrology.py")
_sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sim)
mwh_in_second = _sim.mwh_in_second
received_mwh_in_second = _sim.received_mwh_in_second
energies_in_second = _sim.energies_in_second

# The rig's meter: single phase, 240 V, class 100 (100 A): 24 kW at its rating.
RATED_W = 24000

# Consumption and generation in W at each hour of the local day (joined by straight lines),
# and how much each second's level jitters around them (%).
_HOME_W = [300, 260, 240, 240, 250, 320, 900, 1800, 1500, 700, 550, 600,
           700, 600, 550, 600, 900, 1800, 2800, 3200, 2600, 1800, 1000, 500]
_ROOF_PV_W = [0, 0, 0, 0, 0, 0, 150, 700, 1600, 2500, 3300, 3800,
              4000, 3800, 3300, 2500, 1600, 700, 150, 0, 0, 0, 0, 0]
_SHOP_W = [6000, 6000, 6000, 6000, 6000, 6000, 12000, 20000, 22000, 22000, 22000, 22000,
           22000, 22000, 22000, 22000, 22000, 22000, 20000, 12000, 7000, 7000, 7000, 7000]

PROFILES = {
    # The rig's first load, flat through the day with bursts of export; every test that names
    # no profile runs on it, and its numbers are the ones those tests were written against.
    "mixed": None,
    # A home: a night base load (fridge, standby), peaks in the morning and the evening.
    "residential": {"load_w": _HOME_W, "load_jitter_pct": 40},
    # Nobody there, nothing switched on: no energy at all, either way, for as long as it lasts.
    "vacant": {"load_w": [0] * 24, "load_jitter_pct": 0},
    # The same home with 4 kW of rooftop PV: it exports from mid-morning to mid-afternoon (clouds
    # jitter the panels), imports at night and in the evening peak.
    "solar": {"load_w": _HOME_W, "load_jitter_pct": 40, "pv_w": _ROOF_PV_W, "pv_jitter_pct": 25},
    # A workshop: a quarter of the rating at night, 92 % of it (up to 99 %) in business hours.
    "commercial": {"load_w": _SHOP_W, "load_jitter_pct": 8},
}
DEFAULT = "mixed"
assert max(_SHOP_W) * 108 // 100 < RATED_W

_SPEC = re.compile(r"([a-z]+)(?:@([+-])(\d\d):(\d\d))?")
_MAX_OFFSET_S = 14 * 3600


def load_curve(spec: str | None) -> dict | None:
    """The curve of a profile spec, `NAME` or `NAME@+HH:MM` (the premises' offset from UTC), as
    the front-ends take it; ValueError, in one line, for a spec that names no profile."""
    m = _SPEC.fullmatch(spec or DEFAULT)
    if m is None or m.group(1) not in PROFILES:
        raise ValueError(f"unknown load profile {spec!r}: one of {', '.join(PROFILES)}, "
                         "optionally with the premises' UTC offset (solar@+10:00)")
    curve = PROFILES[m.group(1)]
    if not m.group(2):
        return curve
    offset_s = (int(m.group(3)) * 3600 + int(m.group(4)) * 60) * (-1 if m.group(2) == "-" else 1)
    if abs(offset_s) > _MAX_OFFSET_S or int(m.group(4)) >= 60:
        raise ValueError(f"load profile {spec!r}: the UTC offset must be +HH:MM or -HH:MM within 14:00")
    return dict(curve, utc_offset_s=offset_s) if curve else None  # `mixed` has no daily curve


def at_local_time(name: str, local_s: int, now_s: int | None = None) -> str:
    """The spec of profile `name` at a premises whose local time of day is `local_s` (seconds
    after midnight) now: its UTC offset in whole minutes, within ±12 h."""
    now_s = int(time.time()) if now_s is None else now_s
    offset_min = ((local_s - now_s + 43200) % 86400 - 43200) // 60
    sign = "-" if offset_min < 0 else "+"
    return f"{name}@{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


def true_energies(seed: int, start_s: int, end_s: int, load: str | None = None) -> tuple[int, int]:
    """(delivered_mwh, received_mwh) that flowed in the whole seconds [start_s, end_s)."""
    curve = load_curve(load)
    d = r = 0
    for s in range(start_s, end_s):
        a, b = energies_in_second(seed, curve, s)
        d += a
        r += b
    return d, r


def true_energy_mwh(seed: int, start_s: int, end_s: int, load: str | None = None) -> int:
    """Delivered energy that flowed in the whole seconds [start_s, end_s)."""
    return true_energies(seed, start_s, end_s, load)[0]


def true_received_mwh(seed: int, start_s: int, end_s: int, load: str | None = None) -> int:
    """Received (exported) energy in the whole seconds [start_s, end_s)."""
    return true_energies(seed, start_s, end_s, load)[1]
