"""The host's twin of the simulated metrology front-end (boards/sim/metrology.py).

Energy per whole second is a pure function of the seed and the second, so the rig knows the
true energy of any interval without asking the meter — and can check the meter's arithmetic.
Two channels, as on a net (NEM) meter: delivered to the customer, and received from them.
"""


def mwh_in_second(seed: int, s: int) -> int:
    x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 1103515245) & 0xFFFFFFFF
    return 200 + (x >> 8) % 401


def received_mwh_in_second(seed: int, s: int) -> int:
    if (s // 10 + seed) % 3:
        return 0
    x = (s * 2246822519 + seed * 3266489 + 374761393) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 668265263) & 0xFFFFFFFF
    return (x >> 8) % 301


def true_energy_mwh(seed: int, start_s: int, end_s: int) -> int:
    """Delivered energy that flowed in the whole seconds [start_s, end_s)."""
    return sum(mwh_in_second(seed, s) for s in range(start_s, end_s))


def true_received_mwh(seed: int, start_s: int, end_s: int) -> int:
    """Received (exported) energy in the whole seconds [start_s, end_s)."""
    return sum(received_mwh_in_second(seed, s) for s in range(start_s, end_s))
