"""The host's twin of the simulated metrology front-end (boards/sim/simhw.py Metrology).

Energy per whole second is a pure function of the seed and the second, so the rig knows the
true energy of any interval without asking the meter — and can check the meter's arithmetic.
"""


def mwh_in_second(seed: int, s: int) -> int:
    x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 1103515245) & 0xFFFFFFFF
    return 200 + (x >> 8) % 401


def true_energy_mwh(seed: int, start_s: int, end_s: int) -> int:
    """Energy that flowed in the whole seconds [start_s, end_s)."""
    return sum(mwh_in_second(seed, s) for s in range(start_s, end_s))
