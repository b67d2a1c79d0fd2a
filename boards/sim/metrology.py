# Simulated metrology front-end (an ADE7953-like chip) of the sim board (see simhw.py).
# The energy functions are plain integer Python that CPython runs too: the host's twin
# (hil/metrology.py) loads them from this file, and hil/pico/parts.mjs has them in JavaScript
# for the emulated Pico; a test holds the three to the same numbers.
import time


def _mix(seed, s):
    x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
    x ^= x >> 13
    return (x * 1103515245) & 0xFFFFFFFF


def mwh_in_second(seed, s):
    """Delivered energy of the `mixed` load (the rig's first, flat one): 0.72 to 2.16 kW."""
    return 200 + (_mix(seed, s) >> 8) % 401


def received_mwh_in_second(seed, s):
    """Received energy of the `mixed` load: a third of the time, in runs of ten seconds."""
    if (s // 10 + seed) % 3:
        return 0
    x = (s * 2246822519 + seed * 3266489 + 374761393) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 668265263) & 0xFFFFFFFF
    return (x >> 8) % 301  # 0 to 1.08 kW


def _level_w(points, sod, jitter_pct, r):
    # The hourly points are joined by straight lines; r (0..65535) jitters the level.
    h = sod // 3600
    f = sod % 3600
    w = (points[h] * (3600 - f) + points[(h + 1) % 24] * f) // 3600
    return w * (100 - jitter_pct + r % (2 * jitter_pct + 1)) // 100


def energies_in_second(seed, curve, s):
    """(delivered_mwh, received_mwh) in the whole second s, for a load curve (hil/metrology.py
    defines them; None is the `mixed` load). A curve is the premises' consumption and, with
    rooftop PV, its generation, in W at each hour of its local day (UTC + utc_offset_s); the
    meter sees the difference: import when consumption is larger, export when PV is."""
    if curve is None:
        return mwh_in_second(seed, s), received_mwh_in_second(seed, s)
    sod = (s + curve.get("utc_offset_s", 0)) % 86400
    x = _mix(seed, s)
    net_w = _level_w(curve["load_w"], sod, curve.get("load_jitter_pct", 0), x & 0xFFFF)
    pv = curve.get("pv_w")
    if pv:
        net_w -= _level_w(pv, sod, curve.get("pv_jitter_pct", 0), x >> 16)
    if net_w >= 0:
        return net_w * 5 // 18, 0  # W for one second, in mWh
    return 0, -net_w * 5 // 18


class Metrology:
    """Front-end energy accumulators, like an ADE7953: they count on while the MCU reboots.

    Two channels, as a net (NEM) meter has: energy delivered to the customer and energy
    received from them (rooftop PV exporting). Energy per whole second is a pure function of
    the seed, the premises' load curve and the true time, so the host computes the same totals
    independently of the meter.
    """

    def __init__(self, seed, created_s, curve=None):
        self._seed = seed
        self._curve = curve
        self._t = created_s
        self._mwh = 0
        self._rx_mwh = 0

    def _advance(self):
        now = int(time.time())
        while self._t < now:
            d, r = energies_in_second(self._seed, self._curve, self._t)
            self._mwh += d
            self._rx_mwh += r
            self._t += 1

    def energy_mwh(self):
        self._advance()
        return self._mwh

    def read(self):
        """(delivered_mwh, received_mwh), both at the same instant."""
        self._advance()
        return self._mwh, self._rx_mwh
