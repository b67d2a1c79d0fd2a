# Board HAL for the simulated Pico. The same interface is implemented by boards/pico and
# boards/pico2; the bootloader and the application see nothing else of the hardware.
import json
import time
import simhw

NAME = "sim"
# Defaults a test rig may override in sim.json (a real board takes them from its config).
OVERRIDABLE = ("interval_s", "watchdog_ms", "trial_attempts", "require_approval")


class Watchdog:
    def __init__(self, hw, timeout_ms):
        self._hw = hw
        self._feed_every_ms = timeout_ms // 4  # a heartbeat per feed would flood the supervisor
        self._last = time.ticks_ms()
        hw.watchdog_arm(timeout_ms)

    def feed(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last) >= self._feed_every_ms:
            self._last = now
            self._hw.watchdog_feed()


class Clock:
    """Wall clock in epoch ms. The sim's RTC is the host clock plus an injectable offset."""

    def __init__(self, hw):
        self._hw = hw

    def time_ms(self):
        return time.time_ns() // 1000000 + self._hw.clock_offset_ms

    def set_time_ms(self, t_ms):
        self._hw.clock_offset_ms = t_ms - time.time_ns() // 1000000


class Board:
    name = NAME

    def __init__(self):
        self._hw = simhw.hardware()
        with open("/board/board.json") as f:
            self.config = json.load(f)
        self.defaults = self.config["defaults"]
        for key in OVERRIDABLE:  # the rig may override defaults per run
            if self._hw.sim.get(key) is not None:
                self.defaults[key] = self._hw.sim[key]
        self.clock = Clock(self._hw)
        self.link_in = self._hw.stdin    # raw pty with VMIN=0: readinto returns what is there
        self.link_out = self._hw.stdout

    def reset_cause(self):
        return self._hw.reset_cause

    def watchdog(self, timeout_ms):
        return Watchdog(self._hw, min(timeout_ms, self.config["watchdog_max_ms"]))

    def energy_mwh(self):
        return self._hw.metrology.energy_mwh()

    def reset(self):
        self._hw.reset()

    def display(self, text):
        self._hw.ctl.send("display " + text)
