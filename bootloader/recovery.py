# The recovery console: a minimal command server in the bootloader, opened when no
# application can run (like MCUboot's serial recovery), so a meter with a broken application
# never needs a site visit (BR11). Same link, framing and authentication as the application.
import asyncio
import sys
from micropython import const
from bootloader import eventlog, protocol as P
from bootloader.bootctl import NONE, REASONS, RECOVERY, SLOT_NAMES
from bootloader.link import LinkServer
from bootloader.protocol import CommandError
from bootloader.transfer import Transfer

_FEED_MS = const(1000)
_EVENT_PAGE = const(30)


def console(platform, why):
    """No application can run: a bootloader on trial is the failure (it falls back, and the
    meter resets into the other copy); otherwise the console serves until a reset."""
    if platform.record.trial:
        platform.bootloader_failed(why)
    print("boot: recovery console:", why, file=sys.stderr)  # the board's debug console, not the link
    platform.bcb.reason = RECOVERY
    platform.boot_reason = REASONS[RECOVERY]
    platform.events.log(eventlog.RECOVERY, platform.bcb.active)
    RecoveryConsole(platform, why).run()


class RecoveryConsole:
    def __init__(self, platform, why):
        self.why = why
        self.p = platform
        self.transfer = Transfer(self.p)
        self.link = LinkServer(platform.board)
        self.link.add({P.PING: self.ping, P.STATUS: self.status, P.READ_EVENTS: self.read_events,
                       P.UPD_STATE: self.update_state})
        t = self.transfer
        self.link.add({P.UPD_INITIATE: t.initiate, P.UPD_BLOCK: t.block, P.UPD_VERIFY: t.verify,
                       P.UPD_ACTIVATE: self.activate, P.REVERT: self.revert, P.UNREJECT: self.unreject,
                       P.RETRY: self.retry}, privileged=True)

    async def ping(self, payload):
        return payload

    async def status(self, _payload):
        out = self.p.status()
        out.update({"mode": "recovery", "recovery_reason": self.why, "trial": False, "boot_control": _raw(self.p.bcb),
                    "register_wh": None, "register_mwh": None, "uptime_s": 0, "update": self.transfer.public_state(),
                    "health": None, "link_faults": self.link.faults})
        return out

    async def read_events(self, payload):
        return self.p.events.page(payload, _EVENT_PAGE)

    async def update_state(self, _payload):
        return self.transfer.public_state()

    async def activate(self, _payload):
        self.transfer.activating()
        asyncio.create_task(self._later(self.p.activate, self.transfer.state["slot"]))
        return {"when": "now", "boundary_s": None}

    async def revert(self, _payload):
        if not self.p.can_revert():
            raise CommandError("no_previous", "no previous image to revert to")
        asyncio.create_task(self._later(self.p.revert))
        return {"reverting": True}

    async def unreject(self, payload):
        return {"unrejected": self.p.unreject(bytes(payload))}

    async def retry(self, _payload):
        """Give the active image a fresh set of tries, as after a repair of its data."""
        self.p.bcb.failures = 0
        self.p.bcb.save()
        asyncio.create_task(self._later(self.p.board.reset))
        return {"retrying": True}

    async def _later(self, fn, *args):
        await asyncio.sleep_ms(50)  # let the reply leave first
        fn(*args)

    async def _feed(self):
        while True:
            self.p.watchdog.feed()
            await asyncio.sleep_ms(_FEED_MS)

    def run(self):
        async def main():
            asyncio.create_task(self._feed())
            await self.link.run()

        asyncio.run(main())


def _raw(b):
    """The boot control block as stored, for whoever repairs the meter."""
    return {"seq": b.seq, "active": SLOT_NAMES[b.active],
            "previous": SLOT_NAMES[b.previous] if b.previous != NONE else None,
            "trial": SLOT_NAMES[b.trial] if b.trial != NONE else None,
            "attempts_left": b.attempts_left, "confirmed": b.confirmed, "reason": REASONS[b.reason],
            "floor": b.floor, "failures": b.failures, "rejected": [r.hex() for r in b.rejected]}
