# Simulated metrology front-end (an ADE7953-like chip) of the sim board (see simhw.py).
import time


class Metrology:
    """Front-end energy accumulator, like an ADE7953: it counts on while the MCU reboots.

    Energy per whole second is a pure function of the seed and the true time, so the host
    computes the same total independently (hil/metrology.py holds the CPython twin).
    """

    def __init__(self, seed, created_s):
        self._seed = seed
        self._t = created_s
        self._mwh = 0

    @staticmethod
    def mwh_in_second(seed, s):
        x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 1103515245) & 0xFFFFFFFF
        return 200 + (x >> 8) % 401  # 0.72 to 2.16 kW

    def energy_mwh(self):
        now = int(time.time())
        while self._t < now:
            self._mwh += self.mwh_in_second(self._seed, self._t)
            self._t += 1
        return self._mwh
