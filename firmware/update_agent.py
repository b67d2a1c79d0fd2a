# The update agent: the bootloader's image transfer (initiate -> blocks -> verify) plus what
# only the application knows:
#   - the upgrade-available notice, a message of its own before any payload (FR33);
#   - when to activate: now, just after an interval closes so the reboot lies inside one
#     interval and no interval is affected (FR5, the default), or at a given time;
#   - never inside a scheduled pricing (CPP) event (FR30): `now` and `at` are refused, a
#     boundary activation moves to the first boundary after the event;
#   - the options the new image reads on its first boot, kept in the update state:
#     registers preserve|reset (FR3) and failure acknowledgement immediate|next-read (FR16);
#   - when the transfer may expect the application to write flash (an interval close), so
#     it grants no window that would still be arriving then.
import asyncio
import json
from micropython import const
from bootloader.protocol import CommandError, query
from bootloader.transfer import Transfer
from bootloader.update_state import VERIFIED

_NOTICE = "/data/notice.json"
# Event codes (bootloader/eventlog.py names them). Defined here: the bootloader in the field is
# never upgraded, so the application may not rely on names an older one lacks.
UPGRADE_NOTICE = const(130)  # value: image size (FR33)
ACTIVATION_DEFERRED = const(131)  # value: seconds later than asked, for a pricing event (FR30)
_REPLY_MS = const(50)  # let the activate reply leave before the reset
_AFTER_CLOSE_MS = const(20)  # the close's own flash writes finish within this after the event
_TICK_MS = const(1000)  # waits re-read the clock at least this often, so a clock set is seen
# A reboot this close before a pricing event would still be going on when the event starts.
PRICING_GUARD_S = const(5)
_PAST_SLACK_S = const(2)

WHEN = ("now", "boundary", "at")
REGISTERS = ("preserve", "reset")
ACK = ("immediate", "next-read")


def _no_events():
    return ()


class UpdateAgent:
    def __init__(self, platform, metering, pricing_events=None):
        self._p = platform
        self._metering = metering
        # () -> [(start_s, end_s)] of scheduled pricing events; the meter state provides it.
        self.pricing_events = pricing_events or _no_events
        self.transfer = t = Transfer(platform, self)
        self.block, self.verify = t.block, t.verify  # the transfer's link commands, beside ours
        self.notice = None
        try:
            with open(_NOTICE) as f:
                self.notice = json.load(f)
        except (OSError, ValueError):
            pass
        self._pending = None  # the task waiting to activate
        self.show = platform.board.display  # the customer display; the app routes it via its notices
        s = t.state
        if s["status"] == VERIFIED and s.get("activate_at_s") is not None:
            # A scheduled activation outlives a reset or a power cut before its time.
            self._pending = asyncio.create_task(self._activate_at(s["activate_at_s"], s.get("when", "at")))

    def release(self):
        """Let go of a download's file and RAM, when no activation waits: the caller may then
        drop this agent (app.py does, before an initiate's signature check). False if one waits."""
        if self._pending is not None and not self._pending.done():
            return False
        self.transfer.release()
        return True

    async def initiate(self, head, admitted=None):
        return await self.transfer.initiate(head, admitted)

    # -- the metering task's flash work, as the transfer schedules around it -----------------
    def ms_to_next(self):
        """Until the open interval closes, and the metering task writes it to flash."""
        return self._next_boundary_s() * 1000 - self._p.board.clock.time_ms()

    async def wait_past(self):
        await self._metering.closed.wait()
        await asyncio.sleep_ms(_AFTER_CLOSE_MS)

    async def state(self, _payload):
        out = self.transfer.public_state()
        out["notice"] = self.notice
        return out

    async def notice_received(self, payload):
        """FR33: "an upgrade is available", apart from the payload. Recorded, logged, shown."""
        q = query(payload)
        notice = {"version": str(q["version"]), "image_id": str(q.get("image_id", "")),
                  "size": int(q.get("size", 0)), "when": str(q.get("when", "boundary")),
                  "received_s": self._now_s()}
        await self.transfer.clear_of_app_flash()
        with open(_NOTICE, "w") as f:
            json.dump(notice, f)
        self.notice = notice
        self._p.events.log(UPGRADE_NOTICE, notice["size"])
        self.show("Firmware %s available" % notice["version"])  # FR32
        return {"noted": True, "update": self.transfer.public_state()}

    def _now_s(self):
        return self._p.board.clock.time_ms() // 1000

    def _next_boundary_s(self, after_s=None):
        m = self._metering
        # The open interval ends on a wall-clock boundary (a first, partial one ends early).
        t = getattr(m, "open_end_s", None) or m.open_start_s + m.interval_s
        if after_s is not None and t < after_s:
            t += (after_s - t + m.interval_s - 1) // m.interval_s * m.interval_s
        return t

    def collision(self, t_s):
        """The pricing event an activation at t_s would fall in (or just before), or None."""
        for ev in self.pricing_events():
            start_s, end_s = ev[0], ev[1]
            if start_s - PRICING_GUARD_S <= t_s < end_s:
                return (start_s, end_s)
        return None

    def _clear_of_events(self, t_s):
        """The first interval boundary at or after t_s outside every pricing event."""
        for _ in range(64):  # events are finite; a bound keeps a bad table from hanging us
            ev = self.collision(t_s)
            if ev is None:
                return t_s
            t_s = self._next_boundary_s(ev[1])
        raise CommandError("pricing_event", "no activation time clear of the scheduled pricing events")

    async def activate(self, payload):
        q = query(payload)
        when = q.get("when", "boundary")
        registers = q.get("registers", "preserve")
        ack = q.get("ack", "immediate")
        if when not in WHEN:
            raise CommandError("bad_request", "activation time must be now, boundary or at")
        if registers not in REGISTERS:
            raise CommandError("bad_request", "registers must be preserve or reset")
        if ack not in ACK:
            raise CommandError("bad_request", "ack must be immediate or next-read")
        s = self.transfer.state
        if s["status"] != VERIFIED:
            raise CommandError("not_verified", "verify the image before activating it")
        now_s = self._now_s()
        if when == "now":
            t_s = now_s
        elif when == "boundary":
            t_s = self._next_boundary_s()
        else:
            t_s = int(q["at_s"])
            if t_s < now_s - _PAST_SLACK_S:
                raise CommandError("bad_request", "activation time %d is in the past (meter time %d)" % (t_s, now_s))
            t_s = max(t_s, now_s)
        planned_s = t_s
        ev = self.collision(t_s)
        if ev is not None:
            if when != "boundary":
                raise CommandError("pricing_event", "activation at %d would fall in the pricing event %d..%d" % (t_s, ev[0], ev[1]))
            t_s = self._clear_of_events(t_s)
        await self.transfer.clear_of_app_flash()
        if t_s != planned_s:
            self._p.events.log(ACTIVATION_DEFERRED, t_s - planned_s)
        s["registers"] = registers
        s["ack"] = ack
        s["when"] = when
        s["activate_at_s"] = t_s
        self.transfer.save()
        if self._pending is not None:
            self._pending.cancel()
        self._pending = asyncio.create_task(self._activate_at(t_s, when))
        return {"when": when, "activate_at_s": t_s, "deferred_s": t_s - planned_s,
                "boundary_s": t_s if when == "boundary" else None, "meter_time_s": now_s,
                "registers": registers, "ack": ack}

    async def _activate_at(self, t_s, when):
        await asyncio.sleep_ms(_REPLY_MS)
        while True:
            if when == "boundary":
                # Just after the interval ending at t_s has closed and been written.
                while self._metering.open_start_s < t_s:
                    try:
                        await asyncio.wait_for_ms(self._metering.closed.wait(), _TICK_MS)
                    except asyncio.TimeoutError:
                        pass
                await asyncio.sleep_ms(_AFTER_CLOSE_MS)
            else:
                while True:
                    left_ms = t_s * 1000 - self._p.board.clock.time_ms()
                    if left_ms <= 0:
                        break
                    await asyncio.sleep_ms(min(left_ms, _TICK_MS))
            ev = self.collision(self._now_s())
            if ev is None:
                break
            # An event scheduled after the request: move on to the first boundary after it.
            t_s, when = self._clear_of_events(self._next_boundary_s(ev[1])), "boundary"
            self.transfer.state["activate_at_s"] = t_s
            self.transfer.state["when"] = when
            self.transfer.save()
            self._p.events.log(ACTIVATION_DEFERRED, t_s - self._now_s())
        self.transfer.activating()
        self._p.activate(self.transfer.state["slot"])
