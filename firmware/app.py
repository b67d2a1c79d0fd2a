# The meter application: entry module of every firmware image. The bootloader imports it
# from the read-only image at /app and calls main(platform).
import asyncio
import gc
import sys
import time
from micropython import const
from bootloader import protocol
from metering import Metering
from bootloader.link import LinkServer
from update_agent import UpdateAgent
from display import Notices
from meter_state import MeterState
from outbox import Outbox

_EVENT_PAGE = const(30)  # a page stays near 2 KiB: the host's frame limit, and the heap's
_GC_EVERY_BYTES = const(8192)
_LOAD_TRIES = const(5)
_LOAD_RETRY_MS = const(200)


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
            protocol.READ_EVENTS: self.read_events,
        })
        self.link.add({protocol.REVERT: self._run("cmd_change", "revert"),
                       protocol.UNREJECT: self._run("cmd_change", "unreject")}, privileged=True)
        self.agent.register(self.link)
        # The runtime's commands load their code for each request and drop it after: the heap
        # holds none of it while the meter meters and downloads (cmd_status, cmd_read, cmd_change).
        self.link.add({protocol.STATUS: self._run("cmd_status", "status"),
                       protocol.READ_INTERVALS: self._run("cmd_status", "intervals"),
                       protocol.READ_REGISTERS: self._run("cmd_read", "registers"),
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

    async def read_events(self, payload):
        return self.p.events.page(payload, _EVENT_PAGE)

    async def post_boot(self):
        rt = await _load("boot_tasks")
        try:
            await rt.post_boot(self, _load)
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
_LAZY = ("boot_tasks", "cmd_status", "cmd_read", "cmd_change", "health", "health_data", "state_json", "state_edit",
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
