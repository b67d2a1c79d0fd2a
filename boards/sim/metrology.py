# Simulated metrology front-end (an ADE7953-like chip) of the sim board (see simhw.py).
import time


class Metrology:
    """Front-end energy accumulators, like an ADE7953: they count on while the MCU reboots.

    Two channels, as a net (NEM) meter has: energy delivered to the customer and energy
    received from them (rooftop PV exporting in bursts). Energy per whole second is a pure
    function of the seed and the true time, so the host computes the same totals independently
    (hil/metrology.py holds the CPython twin).
    """

    def __init__(self, seed, created_s):
        self._seed = seed
        self._t = created_s
        self._mwh = 0
        self._rx_mwh = 0

    @staticmethod
    def mwh_in_second(seed, s):
        x = (s * 2654435761 + seed * 40503 + 12345) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 1103515245) & 0xFFFFFFFF
        return 200 + (x >> 8) % 401  # 0.72 to 2.16 kW

    @staticmethod
    def received_mwh_in_second(seed, s):
        if (s // 10 + seed) % 3:
            return 0  # exporting a third of the time, in runs of ten seconds
        x = (s * 2246822519 + seed * 3266489 + 374761393) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 668265263) & 0xFFFFFFFF
        return (x >> 8) % 301  # 0 to 1.08 kW

    def _advance(self):
        now = int(time.time())
        while self._t < now:
            self._mwh += self.mwh_in_second(self._seed, self._t)
            self._rx_mwh += self.received_mwh_in_second(self._seed, self._t)
            self._t += 1

    def energy_mwh(self):
        self._advance()
        return self._mwh

    def read(self):
        """(delivered_mwh, received_mwh), both at the same instant."""
        self._advance()
        return self._mwh, self._rx_mwh
