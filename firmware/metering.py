# Metering: intervals closed on wall-clock boundaries from the metrology front-end's own
# accumulators, delivered and received (net metering). Σ interval energy = register delta =
# front-end delta, by construction: each interval is the difference of two front-end readings,
# and the next opens where it closed.
#
# The open interval (its start, flags, the readings and registers it opened at, and the
# register-reset bookkeeping) is one CRC-protected record, /data/open, rewritten at each close
# after the interval record is appended. A power cut between the two writes leaves an open
# record one close behind; the meter then opens from the last interval record instead, which
# carries the same readings.
#
# Intervals whose boundary passed while the MCU was not running (a power cut, a reboot) close
# at once when it runs again. The front-end counted all along, but only the total is known, so
# it is shared over them in proportion to time, and they are flagged estimated.
import asyncio
import struct
import sys
from binascii import crc32
from micropython import const
from intervals import IntervalLog, SEQ, START

OPEN = "/data/open"
# after_seq start_s flags reserved register register_rx frontend frontend_rx resets
# reset_mwh reset_rx_mwh (register values taken away by resets, so lifetime = live + these)
# reset_tag (who asked for the last reset: an image id, so a reset happens once per upgrade)
OPEN_FMT = "<IIHHqqQQIqq16s"
OPEN_BODY = const(80)
# A close this late cannot use a reading at the boundary: energy since would land in it.
_LATE_ESTIMATE_MS = const(1000)
_LATE_KEPT = const(64)
_VALID_FROM_S = const(1704067200)  # 2024-01-01


def _rare(module, name, *args):
    # The seldom-run operations load for the call and leave the heap after it.
    ops = __import__(module)
    try:
        return getattr(ops, name)(*args)
    finally:
        sys.modules.pop(module, None)


class Metering:
    def __init__(self, board, events=None, state=None, boot_reason=None, path=OPEN, log=None):
        self._board = board
        self._events = events
        self.state = state  # the MeterState: load limit, and pricing events for the agent
        d = board.defaults
        self.interval_s = d["interval_s"]
        self.log = log or IntervalLog(d.get("interval_quota_records", 2400),
                                      d.get("interval_segment_records", 100), events)
        self.path = path
        # (delivered_mwh, received_mwh) at one instant; a one-channel front-end receives nothing
        self.read_frontend = getattr(board, "energies_mwh", None) or (lambda: (board.energy_mwh(), 0))
        self.closed = asyncio.Event()
        self.late_ms = []  # lateness of the most recent closes, for the rig's benchmarks
        self.closes = 0
        self.alarm = None  # fn(code, value, message): the outbox, set by the application
        self.resets = 0
        self.reset_mwh = 0
        self.reset_rx_mwh = 0
        self.reset_tag = bytes(16)
        self.over_limit = False
        _rare("metering_boot", "restore", self, boot_reason == "power-on")

    # -- the open interval ----------------------------------------------------------------------
    def _set_open(self, start_s, fe, fe_rx, reg, reg_rx, flags):
        self.open_start_s = start_s
        self.open_end_s = (start_s // self.interval_s + 1) * self.interval_s
        self.open_fe, self.open_fe_rx = fe, fe_rx
        self.open_reg, self.open_reg_rx = reg, reg_rx
        self.open_flags = flags

    def _save_open(self):
        buf = bytearray(OPEN_BODY + 4)
        last = self.log.last
        struct.pack_into(OPEN_FMT, buf, 0, last[SEQ] if last else 0, self.open_start_s, self.open_flags, 0,
                         self.open_reg, self.open_reg_rx, self.open_fe, self.open_fe_rx, self.resets,
                         self.reset_mwh, self.reset_rx_mwh, self.reset_tag)
        struct.pack_into("<I", buf, OPEN_BODY, crc32(memoryview(buf)[:OPEN_BODY]))
        with open(self.path, "wb") as f:  # littlefs commits a file whole at close
            f.write(buf)

    def mark(self, flags):
        """Flag the open interval (firmware change, clock set); persisted at once."""
        if self.open_flags | flags != self.open_flags:
            self.open_flags |= flags
            self._save_open()

    # -- readings -------------------------------------------------------------------------------
    def _reading(self):
        fe, fe_rx = self.read_frontend()
        if fe < self.open_fe or fe_rx < self.open_fe_rx:
            _rare("metering_ops", "front_end_restarted", self, fe)
        return fe, fe_rx

    def registers(self):
        """(delivered_mwh, received_mwh, frontend_mwh, frontend_rx_mwh) now."""
        fe, fe_rx = self._reading()
        return self.open_reg + fe - self.open_fe, self.open_reg_rx + fe_rx - self.open_fe_rx, fe, fe_rx

    def live_register_mwh(self):
        return self.registers()[0]

    def clock_valid(self, now_s):
        """A clock that reads before 2024 lost its time; one behind the last interval went back."""
        last = self.log.last
        return now_s >= _VALID_FROM_S and not (last and now_s < last[START])

    def pricing_events(self):
        """Scheduled pricing (CPP) events as [(start_s, end_s)], for the update agent (FR30)."""
        return self.state.pricing_events() if self.state else []

    # -- closing --------------------------------------------------------------------------------
    def _record(self, duration_s, flags, fe, fe_rx, now_ms):
        e = fe - self.open_fe
        self.open_reg += e
        self.open_reg_rx += fe_rx - self.open_fe_rx
        self.log.append(self.open_start_s, duration_s, flags, e, fe_rx - self.open_fe_rx, self.open_reg,
                        self.open_reg_rx, fe, fe_rx)
        self.closes += 1
        self.late_ms.append(now_ms - (self.open_start_s + duration_s) * 1000)
        del self.late_ms[:-_LATE_KEPT]
        if self.over_limit or self.state and self.state.limit_w():
            _rare("metering_ops", "check_limit", self, e, duration_s)

    def _close_on_time(self, now_ms):
        fe, fe_rx = self._reading()
        end = self.open_end_s
        self._record(end - self.open_start_s, self.open_flags, fe, fe_rx, now_ms)
        self._set_open(end, fe, fe_rx, self.open_reg, self.open_reg_rx, 0)
        self._save_open()
        self.outage = False
        self.closed.set()
        self.closed.clear()

    async def step(self, now_ms):
        """Close whatever is due at now_ms; returns the ms left to the next boundary."""
        while True:
            due_ms = self.open_end_s * 1000 - now_ms
            if due_ms > 0:
                return due_ms
            if -due_ms < _LATE_ESTIMATE_MS:
                self._close_on_time(now_ms)
            elif -due_ms // 1000 // self.interval_s >= self.log.quota_records:
                _rare("metering_ops", "clock_leapt", self, now_ms)
            else:
                # Intervals missed while the MCU was not running close here at once, in order.
                await _rare("metering_boot", "close_overdue", self, now_ms)

    async def run(self):
        clock = self._board.clock
        while True:
            await self.step(clock.time_ms())
            # Measured after the close: its own flash writes take tens of ms, and sleeping for
            # a wait computed before them would make the next close late by that much.
            due_ms = self.open_end_s * 1000 - clock.time_ms()
            # Re-check at least every second so a clock change is noticed promptly.
            await asyncio.sleep_ms(max(0, min(due_ms, 1000)))

    # -- seldom: metering_ops.py ---------------------------------------------------------------
    def clock_set(self, old_ms, new_ms):
        """The clock was set: flag, or split, the open interval. True if it was split."""
        return _rare("metering_ops", "clock_set", self, old_ms, new_ms)

    def reset_registers(self, tag=None):
        """Reset the registers, logging them first; once per tag (FR3). See metering_ops."""
        return _rare("metering_ops", "reset_registers", self, tag)

    def pre_switch(self, path=None):
        """Store the pre-switch snapshot; call it just before the reset into another image."""
        return _rare("metering_ops", "pre_switch", self, path)
