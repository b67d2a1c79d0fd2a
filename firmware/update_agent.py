# The update agent: the bootloader's image transfer (initiate -> blocks -> verify) plus what
# only the application knows:
#   - the upgrade-available notice, a message of its own before any payload (FR33);
#   - when the transfer may expect the application to write flash (an interval close), so
#     it grants no window that would still be arriving then;
#   - when and how to activate (activation.py, loaded for an activation only);
#   - a delta's blocks, each expanded from the running image into the block it stands for
#     (delta.py, loaded while a delta runs).
# The application loads the agent at the first update command of a boot and keeps it until an
# initiate lets it go (app.py, loader.py); the commands below reach it through the application.
import asyncio
import loader
import upgrade_notice
from micropython import const
from bootloader.api import U32_MAX, VERIFIED, CommandError, field, query, transfer
from event_codes import UPGRADE_NOTICE

_TEXT_MAX = const(32)  # a notice's version and time, as the display shows them
_SETTLE_WAIT_MS = const(3000)  # longest wait for an interval close to pass
_AFTER_CLOSE_MS = const(20)  # an interval close's own flash writes finish within this after it


def _no_events():
    return ()


class UpdateAgent:
    def __init__(self, platform, metering, pricing_events=None):
        self.platform = platform
        self.metering = metering
        # () -> [(start_s, end_s)] of scheduled pricing events; the meter state provides it.
        self.pricing_events = pricing_events or _no_events
        self.transfer = t = transfer(platform, self)
        self.verify = t.verify  # the transfer's link command, beside ours
        self._delta = None  # a delta's expander (delta.py), while one runs
        self.notice = upgrade_notice.load()
        self._pending = None  # the task waiting to activate
        self.show = platform.board.display  # the customer display; the app routes it via its notices
        s = t.state
        if s["status"] == VERIFIED and s.get("activate_at_s") is not None:
            # A scheduled activation outlives a reset or a power cut before its time.
            self.schedule_activation(s["activate_at_s"], s.get("when", "at"))

    def release(self):
        """Let go of a download's file and RAM, when no activation waits: the caller may then
        drop this agent (app.py does, before an initiate's signature check). False if one waits."""
        if self._pending is not None and not self._pending.done():
            return False
        self.transfer.release()
        self._drop_delta()
        return True

    def _drop_delta(self):
        if self._delta is not None:
            self._delta.close()
            self._delta = None

    async def initiate(self, head, admitted=None, base=None):
        self._drop_delta()  # the next delta's base is checked afresh
        return await self.transfer.initiate(head, admitted, base)

    async def block(self, payload):
        if self.transfer.state.get("base"):  # a delta's recipe: the transfer takes the block it describes
            if self._delta is None:  # checked once a transfer: the running image is fixed for the boot
                if self.transfer.state["base"] != self.platform.image_id.hex():  # stored before a switch
                    raise CommandError("wrong_base", "the delta under way applies to another image: initiate again")
                await self.metering.clear_of_close()
                self._delta = loader.call("delta", "Expander", self.platform, self.transfer.block_size)
            payload = self._delta.expand(payload)
        return await self.transfer.block(payload)

    # -- the metering task's flash work, as the transfer schedules around it -----------------
    def ms_to_next(self):
        """Until the open interval closes, and the metering task writes it to flash."""
        return self.next_boundary_s() * 1000 - self.platform.board.clock.time_ms()

    async def settle(self):
        """Once the interval close due now has passed, with its flash writes."""
        try:
            # The event's own wait, not a coroutine of ours: the task wait_for makes can outlive
            # the wait by a while, and what its coroutine refers to stays on the heap.
            await asyncio.wait_for_ms(self.metering.closed.wait(), _SETTLE_WAIT_MS)
        except asyncio.TimeoutError:
            return  # the metering task is late or gone: do not hold the transfer up
        await self.after_close()

    @staticmethod
    async def after_close():
        """Once an interval has closed: the wait for its own flash writes to finish."""
        await asyncio.sleep_ms(_AFTER_CLOSE_MS)

    async def notice_received(self, payload):
        """FR33: "an upgrade is available", apart from the payload. Recorded, logged, shown."""
        q = query(payload)
        notice = {"version": field(q, "version", str), "image_id": field(q, "image_id", str, ""),
                  "size": field(q, "size", int, 0, lo=0, hi=U32_MAX), "when": field(q, "when", str, "boundary"),
                  "received_s": self.now_s()}
        if len(notice["version"]) > _TEXT_MAX or len(notice["image_id"]) > 64 or len(notice["when"]) > _TEXT_MAX:
            raise CommandError("bad_request", "notice fields too long")
        await self.transfer.clear_of_app_flash()
        upgrade_notice.store(notice)
        self.notice = notice
        self.platform.events.log(UPGRADE_NOTICE, notice["size"])
        self.show("Firmware %s available" % notice["version"])  # FR32
        return {"noted": True, "update": self.transfer.public_state()}

    def now_s(self):
        return self.platform.board.clock.time_ms() // 1000

    def next_boundary_s(self, after_s=None):
        m = self.metering
        # The open interval ends on a wall-clock boundary (a first, partial one ends early).
        t = m.open.end_s
        if after_s is not None and t < after_s:
            t += (after_s - t + m.interval_s - 1) // m.interval_s * m.interval_s
        return t

    # -- activation (activation.py) ------------------------------------------------------------
    async def activate(self, payload):
        await self.metering.clear_of_close()
        return await loader.run("activation", "activate", self, payload)

    def schedule_activation(self, t_s, when):
        if self._pending is not None:
            self._pending.cancel()
        # The task's coroutine holds activation's code until it switches; the module table does not.
        self._pending = asyncio.create_task(loader.call("activation", "run_at", self, t_s, when))


# -- the link's update commands (commands.py): each reaches the application's agent, loaded at
# the first ---------------------------------------------------------------------------------------
async def notice(m, payload):
    return await (await m.updates()).notice_received(payload)


async def block(m, payload):
    return await (await m.updates()).block(payload)


async def verify(m, payload):
    return await (await m.updates()).verify(payload)


async def activate(m, payload):
    return await (await m.updates()).activate(payload)
