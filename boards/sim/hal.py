# Board HAL for the simulated Pico. The same interface is implemented by boards/pico and
# boards/pico2; the bootloader and the application see nothing else of the hardware.
import json
import time
import simhw

NAME = "sim"
# Defaults a test rig may override in sim.json (a real board takes them from its config).
OVERRIDABLE = ("interval_s", "watchdog_ms", "trial_attempts", "require_approval",
               "interval_quota_records", "interval_segment_records")


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
        offset_ms = t_ms - time.time_ns() // 1000000
        rtc = self._hw.rtc  # the backed-up RTC keeps the setting through resets and power cuts
        rtc.store(rtc.adjust_ms + offset_ms - self._hw.clock_offset_ms)
        self._hw.clock_offset_ms = offset_ms


class Board:
    name = NAME

    def __init__(self):
        self._hw = simhw.hardware()
        with open("/board/board.json") as f:
            self.config = json.load(f)
        self.defaults = self.config["defaults"]
        # The simulated parts (flash, UART and metrology models) take ~30 KB of the heap that
        # silicon and C give a Pico, so the health check's free-heap floor is lower than 25 %.
        self.defaults.setdefault("min_free_heap_pct", 15)
        for key in OVERRIDABLE:  # the rig may override defaults per run
            if self._hw.sim.get(key) is not None:
                self.defaults[key] = self._hw.sim[key]
        self.clock = Clock(self._hw)
        # The raw pty (VMIN=0: readinto returns what is there), or the UART model over it.
        self.link_in = self._hw.link_in
        self.link_bytes_per_s = self._hw.link_bytes_per_s  # None: not paced
        self.link_out = self._hw.stdout
        # The latching service relay: its driver reads the position and never pulses a coil on
        # its own (FR2); only the application's authenticated relay command does.
        self.relay = self._hw.relay
        # The HAN radio (a Zigbee-SE co-processor on the rig's simulated medium), or None.
        self.han_radio = self._hw.han_radio
        # Heap the simulated parts take (a Pico has them in silicon and C): status reports it
        # so the rig can tell the application's own share.
        self.heap_models = self._hw.models_heap

    def reset_cause(self):
        return self._hw.reset_cause

    def watchdog(self, timeout_ms):
        return Watchdog(self._hw, min(timeout_ms, self.config["watchdog_max_ms"]))

    def energy_mwh(self):
        return self._hw.metrology.energy_mwh()

    def reset(self):
        self._hw.reset()

    def energies_mwh(self):
        """(delivered_mwh, received_mwh) from the front-end, read at the same instant."""
        return self._hw.metrology.read()

    def metrology_fault(self):
        """The simulated front-end always answers (its energy is a function of time)."""
        return None

    def display(self, text):
        self._hw.display.show(text)

    def interface_checks(self):
        """HAN and NAN interface checks for the health check: name -> fn() returning None when
        the interface answers or a message when not; None when the board has none to report on.
        sim.json's nan "fail" plays a NAN module that does not answer, whatever the image's NAN
        driver (otherwise the driver's own check decides); its HAN is a radio (han_radio), which
        the application's HAN driver checks itself."""
        return {"han": None, "nan": self._nan()}

    def _nan(self):
        fitted = self._hw.sim.get("nan")
        if fitted is None or fitted == "absent":
            return None
        return lambda: None if fitted == "ok" else "nan interface does not answer"
