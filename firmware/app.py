# The meter application: entry module of every firmware image. The bootloader imports it
# from the read-only image at /app and calls main(platform).
import asyncio
import gc
import time
from micropython import const
import event_codes
import loader
from bootloader.api import CommandError, LinkServer, admit
from metering import Metering
from display import Notices
from han import Han
from meter_state import MeterState
from outbox import Outbox

_EVENT_PAGE = const(30)  # a page stays near 2 KiB: the host's frame limit, and the heap's
_GC_EVERY_BYTES = const(32768)
_FEED_MS = const(100)
_PROBE_EVERY = const(10)  # feeds between two probes of the live heap


class MeterApp:
    """The meter application on a board: metering, the meter state, the outbox, the link and,
    while an update needs it, the update agent. Command handlers get it as `m`."""

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
        self.agent = None  # the update agent, while an update needs it (updates())
        self.han = Han(self)  # the home area network's queue of jobs, and its task while it has some
        # Every switch the running image asks for (the update agent's activation, an operator's
        # revert) stores the pre-switch snapshot first, so the next image's health check has
        # registers and a meter state hash to compare with.
        platform.before_switch = self._before_switch
        self.health = None
        self.heap_peak = 0
        self.heap_peak_live = 0
        public, privileged = loader.call("commands", "table", self)
        # The network link this image's driver serves (nan.py): the old NAN's is the board's own
        # stream, and no code of it stays on the heap.
        self.nan = loader.call("nan", "open", self.board)
        self.link = LinkServer(self.nan, public)
        self.link.add(privileged, privileged=True)
        self.outbox.send = self.link.send_alarm
        self.outbox.activity = self._requests

    def _requests(self):
        return self.link.requests

    def _before_switch(self):
        loader.call("snapshot", "take", self.metering)

    async def serve(self, where, payload):
        """A command served by code loaded for the request: `where` is (module, function)."""
        # A MemoryError reaches the host as "no_memory" (the link server).
        await self.metering.clear_of_close()
        return await loader.run(where[0], where[1], self, payload)

    def updates_now(self):
        """The update agent, loaded at its first use in a boot. It and the transfer are ~11 KB
        of code that the heap holds only from then on, not while the meter just meters."""
        if self.agent is None:
            a = loader.call("update_agent", "UpdateAgent", self.p, self.metering, self.state.pricing_events)
            a.show = self.notices.show
            a.transfer.changed = self.notices.transfer_changed
            self.agent = a
        return self.agent

    async def updates(self):
        """updates_now(), waiting a little for room to load it when the heap has none just now."""
        if self.agent is None:
            await self.metering.clear_of_close()
            await loader.room("update_agent")
        return self.updates_now()

    def _drop_agent(self):
        # A plain function, not part of a coroutine: a coroutine's frame lives on the heap, and
        # a stale reference left in it would keep the agent there.
        if self.agent is not None and self.agent.release():
            self.agent = None
            loader.drop(loader.KEPT)

    async def initiate(self, head, base=None):
        # The head is admitted (manifest checks, Ed25519 signatures) before the update agent
        # loads, and with the agent dropped when nothing waits on it: the signature check is
        # the most the meter loads at once, so it shares the heap with the resident code alone.
        if self.p.in_trial:
            # The inactive slot holds the image a failed trial reverts to: a download would
            # overwrite it, and a bad trial image would then have nowhere to go back to.
            raise CommandError("on_trial", "version %s is on trial: wait for its verdict (confirmed or reverted) "
                               "before another download" % self.p.manifest["version"])
        self._drop_agent()
        gc.collect()
        await asyncio.sleep_ms(0)  # each step below takes tens of ms on a Pico: metering goes between
        await self.metering.clear_of_close()
        await loader.room("bootloader.admission")  # admit() loads it: here it may wait for room
        await asyncio.sleep_ms(0)
        admitted = await admit(self.p, head)  # its code leaves the heap before the agent's arrives
        return await (await self.updates()).initiate(head, admitted, base)

    async def initiate_delta(self, payload):
        """A delta's initiate: the id of the image it applies to, then the new image's head.
        Refused before anything else when this meter runs another image."""
        base = bytes(payload[:32])
        if base != self.p.image_id:
            raise CommandError("wrong_base", "the delta applies to image %s; this meter runs %s (%s)"
                               % (base.hex()[:16], self.p.image_id.hex()[:16], self.p.manifest["version"]))
        return await self.initiate(bytes(payload[32:]), base)

    async def ping(self, payload):
        return payload

    async def read_events(self, payload):
        return self.p.events.page(payload, _EVENT_PAGE, event_codes.names)

    async def post_boot(self):
        await self.metering.clear_of_close()  # a load is a step metering cannot pause
        await loader.run("boot_tasks", "post_boot", self)

    async def feed_watchdog(self):
        probed = 0
        while True:
            self.p.watchdog.feed()
            used = gc.mem_alloc()  # sampled here: heap use at its busiest is what the Pico must fit
            self.heap_peak = max(self.heap_peak, used)
            probed += 1
            if used > self.heap_peak_live and probed >= _PROBE_EVERY:
                # Perhaps a new high: how much of it is live? Garbage is room the next
                # collection gives back; what the heap must hold is what stays. At most once
                # a second: a collection takes ~20 ms on a Pico, and while a verify allocates,
                # every sample is above the last live peak.
                probed = 0
                gc.collect()
                self.heap_peak_live = max(self.heap_peak_live, gc.mem_alloc())
            await asyncio.sleep_ms(_FEED_MS)

    async def run(self):
        asyncio.create_task(self.feed_watchdog())
        asyncio.create_task(self.metering.run())
        asyncio.create_task(self.post_boot())
        asyncio.create_task(self.outbox.run())
        await self.link.run()


def main(platform):
    # Collect after every 32 KiB allocated rather than when the heap is full: garbage goes
    # early, live objects pack low, and the contiguous room that importing a module or
    # encoding a reply needs stays free (a full-heap collection leaves it fragmented). Not
    # more often: a collection marks the whole live heap, ~20 ms on a Pico, and at 8 KiB a
    # signature check spent more time collecting than computing.
    gc.threshold(_GC_EVERY_BYTES)
    asyncio.run(MeterApp(platform).run())
