# The meter application: entry module of every firmware image. The bootloader imports it
# from the read-only image at /app and calls main(platform).
import asyncio
import gc
import json
import sys
import time
from bootloader import protocol
from bootloader.bootctl import SLOT_NAMES
from intervals import FIRMWARE_CHANGE, FLAG_NAMES
from metering import Metering
from bootloader.link import LinkServer
from update_agent import UpdateAgent
import codes
from display import Notices
from meter_state import MeterState
from outbox import Outbox

# Pages small enough that a reply stays near 2 KiB: the host's frame limit, and the heap's.
_INTERVAL_PAGE = 20
_EVENT_PAGE = 30
_GC_EVERY_BYTES = 8192
_LOAD_TRIES = 5
_LOAD_RETRY_MS = 200
_IV_FIELDS = ("seq", "start", "duration_s", "flags", "energy_mwh", "received_mwh", "register_mwh",
              "register_received_mwh")


class Meter:
    def __init__(self, platform):
        self.p = platform
        self.board = platform.board
        self.started_ms = time.ticks_ms()
        events = platform.events
        self.state = MeterState(events=events)
        self.metering = Metering(self.board, events, self.state, platform.boot_reason)
        self.outbox = Outbox(self.board.clock, events, self.state.reports_at_once)
        self.metering.alarm = self.outbox.post
        self.notices = Notices(self.board)
        self.agent = UpdateAgent(platform, self.metering, self.metering.pricing_events)
        self.agent.show = self.notices.show
        self.agent.transfer.changed = self.notices.transfer_changed
        # Every switch the running image asks for (the update agent's activation, an operator's
        # revert) stores the pre-switch snapshot first, so the next image's health check has
        # registers and a meter state hash to compare with.
        platform.before_switch = self.metering.pre_switch
        self.health = None
        self.heap_peak = 0
        self.heap_peak_live = 0
        self.link = LinkServer(self.board, {
            protocol.PING: self.ping,
            protocol.STATUS: self.status,
            protocol.READ_INTERVALS: self.read_intervals,
            protocol.READ_EVENTS: self.read_events,
        })
        self.link.add({protocol.REVERT: self.revert, protocol.UNREJECT: self.unreject}, privileged=True)
        self.agent.register(self.link)
        # The runtime's commands load their code for each request and drop it after: the heap
        # holds none of it while the meter meters and downloads (cmd_read.py, cmd_change.py).
        self.link.add({protocol.READ_REGISTERS: self._run("cmd_read", "registers"),
                       protocol.READ_STATE: self._run("cmd_read", "state"),
                       protocol.HEALTH: self._run("cmd_read", "health"),
                       protocol.TIME_GET: self._run("cmd_read", "time_get"),
                       protocol.READ_ALARMS: self._run("cmd_read", "alarms"),
                       protocol.READ_DISPLAY: self._run("cmd_read", "display")})
        self.link.add({protocol.SET_STATE: self._run("cmd_change", "set_state"),
                       protocol.TIME_SET: self._run("cmd_change", "time_set"),
                       protocol.RELAY: self._run("cmd_change", "relay"),
                       protocol.ACK_ALARMS: self._run("cmd_change", "ack"),
                       protocol.RESET_REGISTERS: self._run("cmd_change", "reset_registers")}, privileged=True)
        self.outbox.send = self.link.send_alarm
        self.outbox.activity = self._requests
        _lazy("boot_tasks").at_start(self)  # the relay's latched position is read, never moved (FR2)
        _drop()

    def _requests(self):
        return self.link.requests

    def _run(self, module, name):
        async def handler(payload):
            try:  # a MemoryError reaches the host as "no_memory" (the link server)
                return await getattr(await _load(module), name)(self, payload)
            finally:
                _drop()
        return handler

    async def ping(self, payload):
        return payload

    async def status(self, _payload):
        p = self.p
        return {
            "board": self.board.name,
            "serial": p.identity.get("serial"),
            "active_slot": SLOT_NAMES[p.slot],
            "active_version": p.manifest["version"],
            "confirmed": p.bcb.confirmed,
            "trial": p.in_trial,
            "slots": p.slot_versions(),
            "register_wh": self.metering.live_register_mwh() / 1000,
            "register_mwh": self.metering.live_register_mwh(),
            "register_received_mwh": self.metering.registers()[1],
            "state_hash": self.state.hash(),
            "alarms_pending": len(self.outbox.pending),
            "uptime_s": time.ticks_diff(time.ticks_ms(), self.started_ms) // 1000,
            "boot_reason": p.boot_reason,
            "time_s": self.board.clock.time_ms() // 1000,
            "interval_s": self.metering.interval_s,
            "bootloader_version": p.bootloader_version,
            "security_floor": p.bcb.floor,
            "rejected": [r.hex() for r in p.bcb.rejected],
            "health": self.health,
            "update": self.agent.transfer.public_state(),
            "metering": {"closes": self.metering.closes, "late_ms": self.metering.late_ms},
            "heap": {"free": gc.mem_free(), "used": gc.mem_alloc(), "peak_used": self.heap_peak,
                     "peak_live": self.heap_peak_live, "board_models": getattr(self.board, "heap_models", 0)},
        }

    async def read_intervals(self, payload):
        # Rows rather than objects: a page of 20 stays well inside one frame. `more` says
        # whether records follow; the host pages on from the last seq it got.
        q = json.loads(payload) if payload else {}
        recs, more = self.metering.log.read(q.get("since_seq", 0), max(1, min(q.get("limit", _INTERVAL_PAGE), _INTERVAL_PAGE)),
                                            q.get("since_s", 0))
        return {"fields": _IV_FIELDS, "flag_names": FLAG_NAMES, "more": more,
                "rows": [r[:8] for r in recs], "first_seq": self.metering.log.first_seq}

    async def read_events(self, payload):
        return self.p.events.page(payload, _EVENT_PAGE)

    async def revert(self, _payload):
        if not self.p.can_revert():
            raise protocol.CommandError("no_previous", "no previous image to revert to")
        asyncio.create_task(self._revert())
        return {"reverting": True}

    async def unreject(self, payload):
        return {"unrejected": self.p.unreject(bytes(payload))}

    async def _revert(self):
        await asyncio.sleep_ms(50)  # let the reply leave first
        self.p.revert()

    async def post_boot(self):
        if self.p.boot_reason in ("activate", "revert"):
            self.metering.mark(FIRMWARE_CHANGE)
        self.agent.transfer.settle(self.p.image_id)
        rt = await _load("boot_tasks")  # dropped again at the end
        try:
            rt.boot_notice(self)
            if not self.metering.clock_valid(self.board.clock.time_ms() // 1000):
                self.p.events.log(codes.CLOCK_INVALID, 0)
                self.outbox.post(codes.CLOCK_INVALID, 0, "clock invalid at start-up")
            results = await (await _load("health")).run(self)
            # An absent interface is ok here but keeps its message; `meterfw health` shows its status.
            self.health = [{"check": n, "severity": s, "ok": st != "fail", "message": m} for n, s, st, m, _ in results]
            critical = rt.after_health(self, results)
            if critical and self.p.in_trial:
                self.p.revert(reject=True, why="critical health check failed: " + "; ".join(critical))
            if critical:
                return  # a confirmed image stays; the failure is reported and the boot counts as failed
            self.p.healthy()
            trial = self.p.in_trial
            if trial:
                self.p.confirm()
                self.agent.transfer.confirmed()
            rt.after_confirm(self, trial)
        finally:
            _drop()

    async def feed_watchdog(self):
        while True:
            self.p.watchdog.feed()
            used = gc.mem_alloc()  # sampled here: heap use at its busiest is what the Pico must fit
            self.heap_peak = max(self.heap_peak, used)
            if used > self.heap_peak_live:
                # Perhaps a new high: how much of it is live? Garbage is room the next
                # collection gives back; what the heap must hold is what stays.
                gc.collect()
                self.heap_peak_live = max(self.heap_peak_live, gc.mem_alloc())
            await asyncio.sleep_ms(100)

    async def run(self):
        asyncio.create_task(self.feed_watchdog())
        asyncio.create_task(self.metering.run())
        asyncio.create_task(self.post_boot())
        asyncio.create_task(self.outbox.run())
        await self.link.run()


def _lazy(name):
    return __import__(name)


async def _load(name):
    # A module is read in one piece: when the heap has no room that size just now, let other
    # tasks finish what they hold and try again before giving up.
    for _ in range(_LOAD_TRIES):
        try:
            return __import__(name)
        except MemoryError:
            gc.collect()
            await asyncio.sleep_ms(_LOAD_RETRY_MS)
    return __import__(name)


# Modules loaded for a task and forgotten after it (their names stay interned; their code goes).
_LAZY = ("boot_tasks", "cmd_read", "cmd_change", "health", "health_data", "state_json", "state_edit",
         "state_lists", "metering_boot", "metering_ops", "snapshot")


def _drop():
    # Forget the lazily loaded modules so their code leaves the heap once the last call into
    # them returns.
    for name in _LAZY:
        sys.modules.pop(name, None)


def main(platform):
    # Collect after every few KiB allocated rather than when the heap is full: garbage goes
    # early, live objects pack low, and the contiguous room that importing a module or
    # encoding a reply needs stays free (a full-heap collection leaves it fragmented).
    gc.threshold(_GC_EVERY_BYTES)
    asyncio.run(Meter(platform).run())
