# The meter application: entry module of every firmware image. The bootloader imports it
# from the read-only image at /app and calls main(platform).
import asyncio
import gc
import json
import time
from bootloader import eventlog, protocol
from bootloader.bootctl import SLOT_NAMES
from intervals import FIRMWARE_CHANGE, flag_names
from metering import Metering
from bootloader.link import LinkServer
from update_agent import UpdateAgent
import health


class Meter:
    def __init__(self, platform):
        self.p = platform
        self.board = platform.board
        self.started_ms = time.ticks_ms()
        self.metering = Metering(self.board)
        self.agent = UpdateAgent(platform, self.metering)
        self.health = None
        self.heap_peak = 0
        self.link = LinkServer(self.board, {
            protocol.PING: self.ping,
            protocol.STATUS: self.status,
            protocol.READ_INTERVALS: self.read_intervals,
            protocol.READ_EVENTS: self.read_events,
        })
        self.link.add({protocol.REVERT: self.revert, protocol.UNREJECT: self.unreject}, privileged=True)
        self.agent.register(self.link)

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
            "heap": {"free": gc.mem_free(), "used": gc.mem_alloc(), "peak_used": self.heap_peak},
        }

    async def read_intervals(self, payload):
        q = json.loads(payload) if payload else {}
        recs = self.metering.log.read(q.get("since_seq", 0), min(q.get("limit", 100), 100))
        return {"records": [
            {"seq": r[0], "start": r[1], "duration_s": r[2], "flags": flag_names(r[3]),
             "energy_mwh": r[4], "energy_wh": r[4] / 1000, "register_mwh": r[5]} for r in recs]}

    async def read_events(self, payload):
        q = json.loads(payload) if payload else {}
        evs = self.p.events.read(q.get("since_seq", 0), min(q.get("limit", 50), 50))
        return {"events": [
            {"seq": e[0], "time": e[1], "code": e[2], "name": eventlog.NAMES.get(e[2], "event"), "value": e[3]}
            for e in evs]}

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
        results = await health.run(self.board, self.metering)
        self.health = [{"check": n, "severity": s, "ok": m is None, "message": m} for n, s, m in results]
        critical = [n + ": " + m for n, s, m in results if m and s == health.CRITICAL]
        if any(m for _, _, m in results):
            self.p.events.log(eventlog.HEALTH_FAILED, 1 if critical else 2)
        if critical and self.p.in_trial:
            self.p.revert(reject=True, why="critical health check failed: " + "; ".join(critical))
        if critical:
            return  # a confirmed image stays; the failure is reported and the boot counts as failed
        self.p.healthy()
        if self.p.in_trial:
            self.p.confirm()
            self.agent.transfer.confirmed()

    async def feed_watchdog(self):
        while True:
            self.p.watchdog.feed()
            used = gc.mem_alloc()  # sampled here: heap use at its busiest is what the Pico must fit
            if used > self.heap_peak:
                self.heap_peak = used
            await asyncio.sleep_ms(100)

    async def run(self):
        asyncio.create_task(self.feed_watchdog())
        asyncio.create_task(self.metering.run())
        asyncio.create_task(self.post_boot())
        await self.link.run()


def main(platform):
    asyncio.run(Meter(platform).run())
