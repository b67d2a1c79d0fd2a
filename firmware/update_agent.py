# The update agent: the bootloader's image transfer (initiate -> blocks -> verify) plus the
# application's activation policy: now, or just after an interval closes so the reboot lies
# inside one interval and no interval is affected (FR5).
import asyncio
import json
from bootloader.protocol import CommandError, UPD_INITIATE, UPD_BLOCK, UPD_VERIFY, UPD_ACTIVATE, UPD_STATE
from bootloader.transfer import Transfer


class UpdateAgent:
    def __init__(self, platform, metering):
        self._p = platform
        self._metering = metering
        self.transfer = Transfer(platform)

    def register(self, link):
        t = self.transfer
        link.add({UPD_STATE: self.state})
        link.add({UPD_INITIATE: t.initiate, UPD_BLOCK: t.block, UPD_VERIFY: t.verify,
                  UPD_ACTIVATE: self.activate}, privileged=True)

    async def state(self, _payload):
        return self.transfer.public_state()

    async def activate(self, payload):
        when = json.loads(payload).get("when", "boundary") if payload else "boundary"
        if when not in ("now", "boundary"):
            raise CommandError("bad_request", "activation time must be now or boundary")
        if self.transfer.state["status"] != 3:
            raise CommandError("not_verified", "verify the image before activating it")
        asyncio.create_task(self._activate(when))
        return {"when": when, "boundary_s": self._metering.open_start_s + self._metering.interval_s}

    async def _activate(self, when):
        if when == "boundary":
            await self._metering.closed.wait()
        await asyncio.sleep_ms(50)  # let the reply leave first
        self.transfer.activating()
        self._p.activate(self.transfer.state["slot"])
