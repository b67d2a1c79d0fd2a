# Metering: intervals closed on wall-clock boundaries from the metrology front-end's own
# accumulators, delivered and received (net metering). Σ interval energy = register delta =
# front-end delta, by construction: each interval is the difference of two front-end readings,
# and the next opens where it closed.
#
# The open interval (OpenInterval: its start, flags, the readings and registers it opened at,
# and the register-reset bookkeeping) is one CRC-protected record, /data/open, rewritten at each
# close after the interval record is appended. A power cut between the two writes leaves an open
# record one close behind; the meter then opens from the last interval record instead, which
# carries the same readings.
#
# Intervals whose boundary passed while the MCU was not running (a power cut, a reboot) close
# at once when it runs again. The front-end counted all along, but only the total is known, so
# it is shared over them in proportion to time, and they are flagged estimated.
import asyncio
import gc
import struct
from binascii import crc32
from micropython import const
import loader
from intervals import IntervalLog, SEQ

OPEN = "/data/open"
# after_seq start_s flags reserved register register_rx frontend frontend_rx resets
# reset_mwh reset_rx_mwh reset_tag
OPEN_FMT = "<IIHHqqQQIqq16s"
OPEN_BODY = const(80)
# A close this late cannot use a reading at the boundary: energy since would land in it.
_LATE_ESTIMATE_MS = const(1000)
_LATE_KEPT = const(64)
_RETRY_MS = const(100)
_CLEAR_POLL_MS = const(10)


class OpenInterval:
    """The interval being metered, as its record (/data/open) keeps it: from start_s to end_s
    (the next wall-clock boundary), its flags, the front-end readings and the registers it
    opened at, and the register resets' bookkeeping: resets, what they took away (reset_mwh,
    reset_rx_mwh: lifetime energy = live register + these) and reset_tag (who asked for the
    last: an image id, so a reset happens once per upgrade). metering_restart reads it back."""

    def __init__(self, interval_s, log, path=OPEN):
        self.interval_s = interval_s
        self.log = log  # the record names the last interval record it follows
        self.path = path
        self.start_s = self.end_s = self.flags = 0
        self.frontend_mwh = self.frontend_rx_mwh = self.register_mwh = self.register_rx_mwh = 0
        self.resets = self.reset_mwh = self.reset_rx_mwh = 0
        self.reset_tag = bytes(16)

    def begin(self, start_s, frontend_mwh, frontend_rx_mwh, register_mwh, register_rx_mwh, flags):
        """Open the interval from start_s, at these readings and registers; not yet saved."""
        self.start_s = start_s
        self.end_s = (start_s // self.interval_s + 1) * self.interval_s
        self.frontend_mwh, self.frontend_rx_mwh = frontend_mwh, frontend_rx_mwh
        self.register_mwh, self.register_rx_mwh = register_mwh, register_rx_mwh
        self.flags = flags

    def mark(self, flags):
        """Flag the interval (firmware change, clock set, power down); saved at once."""
        if self.flags | flags != self.flags:
            self.flags |= flags
            self.save()

    def save(self):
        buf = bytearray(OPEN_BODY + 4)
        last = self.log.last
        struct.pack_into(OPEN_FMT, buf, 0, last[SEQ] if last else 0, self.start_s, self.flags, 0,
                         self.register_mwh, self.register_rx_mwh, self.frontend_mwh, self.frontend_rx_mwh,
                         self.resets, self.reset_mwh, self.reset_rx_mwh, self.reset_tag)
        struct.pack_into("<I", buf, OPEN_BODY, crc32(memoryview(buf)[:OPEN_BODY]))
        with open(self.path, "wb") as f:  # littlefs commits a file whole at close
            f.write(buf)


class Metering:
    """The close path, resident while the meter meters. What runs seldom is loaded for it:
    metering_restart (a restart of the MCU or of the front-end), metering_clock (the clock set
    or leapt, and whether it can be trusted), metering_limit (load limiting), metering_reset (a
    register reset), and snapshot (the pre-switch snapshot)."""

    def __init__(self, board, events=None, state=None, boot_reason=None, path=OPEN, log=None):
        self.board = board
        self.events = events
        self.state = state  # the MeterState: the load limit
        d = board.defaults
        self.interval_s = d["interval_s"]
        self.log = log or IntervalLog(d.get("interval_quota_records", 2400),
                                      d.get("interval_segment_records", 100), events)
        self.open = OpenInterval(self.interval_s, self.log, path)
        self.closed = asyncio.Event()
        self.late_ms = []  # lateness of the most recent closes, for the rig's benchmarks
        self.closes = 0
        self.alarm = None  # fn(code, value, message): the outbox, set by the application
        self.over_limit = False
        self.outage = False  # the MCU was without power: the intervals it spanned are flagged
        loader.call("metering_restart", "restore", self, boot_reason == "power-on")

    # -- readings -------------------------------------------------------------------------------
    def reading(self):
        """(delivered_mwh, received_mwh) of the front-end now; a front-end that restarted (it
        reads below the open interval's opening) is taken care of first."""
        fe, fe_rx = self.board.energies_mwh()
        if fe < self.open.frontend_mwh or fe_rx < self.open.frontend_rx_mwh:
            loader.call("metering_restart", "front_end_restarted", self, fe)
        return fe, fe_rx

    def registers(self):
        """(delivered_mwh, received_mwh, frontend_mwh, frontend_rx_mwh) now."""
        fe, fe_rx = self.reading()
        o = self.open
        return o.register_mwh + fe - o.frontend_mwh, o.register_rx_mwh + fe_rx - o.frontend_rx_mwh, fe, fe_rx

    # -- closing --------------------------------------------------------------------------------
    def close(self, duration_s, flags, fe, fe_rx, now_ms, next_s, next_flags):
        """Record the open interval, duration_s long and closed at front-end readings fe/fe_rx,
        and open the next from next_s with next_flags at those readings. The caller saves."""
        # Nothing changes before the record is written and the next interval opens just after,
        # so a failure (no memory just now) leaves the interval open, to be closed once again.
        o = self.open
        e, e_rx, end_s = fe - o.frontend_mwh, fe_rx - o.frontend_rx_mwh, o.start_s + duration_s
        reg, reg_rx = o.register_mwh + e, o.register_rx_mwh + e_rx
        self.log.append(o.start_s, duration_s, flags, e, e_rx, reg, reg_rx, fe, fe_rx)
        o.begin(next_s, fe, fe_rx, reg, reg_rx, next_flags)
        self.closes += 1
        self.late_ms.append(now_ms - end_s * 1000)
        del self.late_ms[:-_LATE_KEPT]
        if self.over_limit or self.state and self.state.limit_w():
            loader.call("metering_limit", "check", self, e, duration_s)

    def closed_now(self):
        """Tell who waits for a close (the transfer's schedule, a boundary activation)."""
        self.outage = False
        self.closed.set()
        self.closed.clear()

    async def clear_of_close(self, ms=loader.LOAD_MS):
        """Once the next close is more than `ms` away, or made: a step that cannot pause (loading
        code takes up to ~100 ms on a Pico) starts then, and the close is not late for it. A
        close overdue by _LATE_ESTIMATE_MS no longer holds it up (metering is late or gone)."""
        end_s = self.open.end_s
        while self.open.end_s == end_s and -_LATE_ESTIMATE_MS < end_s * 1000 - self.board.clock.time_ms() <= ms:
            await asyncio.sleep_ms(_CLEAR_POLL_MS)

    async def step(self, now_ms):
        """Close whatever is due at now_ms; returns the ms left to the next boundary."""
        while True:
            o = self.open
            due_ms = o.end_s * 1000 - now_ms
            if due_ms > 0:
                return due_ms
            if -due_ms < _LATE_ESTIMATE_MS:
                fe, fe_rx = self.reading()
                self.close(o.end_s - o.start_s, o.flags, fe, fe_rx, now_ms, o.end_s, 0)
                o.save()
                self.closed_now()
            elif -due_ms // 1000 // self.interval_s >= self.log.quota_records:
                loader.call("metering_clock", "leapt", self, now_ms)
            else:
                # Intervals missed while the MCU was not running close here at once, in order.
                await loader.run("metering_restart", "close_overdue", self, now_ms)

    async def run(self):
        clock = self.board.clock
        while True:
            try:
                await self.step(clock.time_ms())
            except MemoryError:  # no room just now: the close is made again, the task goes on
                gc.collect()
                await asyncio.sleep_ms(_RETRY_MS)
                continue
            # Measured after the close: its own flash writes take tens of ms, and sleeping for
            # a wait computed before them would make the next close late by that much.
            due_ms = self.open.end_s * 1000 - clock.time_ms()
            # Re-check at least every second so a clock change is noticed promptly.
            await asyncio.sleep_ms(max(0, min(due_ms, 1000)))
