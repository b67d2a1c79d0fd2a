# When and how a verified image is activated, for the update agent (update_agent.py); loaded for
# an activation only, so a download does not carry this code:
#   - now, just after an interval closes so the reboot lies inside one interval and no interval
#     is affected (FR5, the default), or at a given time;
#   - never inside a scheduled pricing (CPP) event (FR30): `now` and `at` are refused, a
#     boundary activation moves to the first boundary after the event;
#   - the options the new image reads on its first boot, kept in the update state:
#     registers preserve|reset (FR3) and failure acknowledgement immediate|next-read (FR16).
import asyncio
from micropython import const
from bootloader.api import U32_MAX, VERIFIED, CommandError, choice, field, query
from event_codes import ACTIVATION_DEFERRED

_REPLY_MS = const(50)  # let the activate reply leave before the reset
_TICK_MS = const(1000)  # waits re-read the clock at least this often, so a clock set is seen
# A reboot this close before a pricing event would still be going on when the event starts.
PRICING_GUARD_S = const(5)
_PAST_SLACK_S = const(2)

WHEN = ("now", "boundary", "at")
REGISTERS = ("preserve", "reset")
ACK = ("immediate", "next-read")


def collision(agent, t_s):
    """The pricing event an activation at t_s would fall in (or just before), or None."""
    for ev in agent.pricing_events():
        start_s, end_s = ev[0], ev[1]
        if start_s - PRICING_GUARD_S <= t_s < end_s:
            return (start_s, end_s)
    return None


def _clear_of_events(agent, t_s):
    """The first interval boundary at or after t_s outside every pricing event."""
    for _ in range(64):  # events are finite; a bound keeps a bad table from hanging us
        ev = collision(agent, t_s)
        if ev is None:
            return t_s
        t_s = agent.next_boundary_s(ev[1])
    raise CommandError("pricing_event", "no activation time clear of the scheduled pricing events")


async def activate(agent, payload):
    q = query(payload)
    when = choice(q, "when", WHEN, "boundary")
    registers = choice(q, "registers", REGISTERS, "preserve")
    ack = choice(q, "ack", ACK, "immediate")
    at_s = field(q, "at_s", int, lo=0, hi=U32_MAX) if when == "at" else None
    t = agent.transfer
    s = t.state
    if s["status"] != VERIFIED:
        raise CommandError("not_verified", "verify the image before activating it")
    t.above_floor()
    now_s = agent.now_s()
    if when == "now":
        t_s = now_s
    elif when == "boundary":
        t_s = agent.next_boundary_s()
    else:
        t_s = at_s
        if t_s < now_s - _PAST_SLACK_S:
            raise CommandError("bad_request", "activation time %d is in the past (meter time %d)" % (t_s, now_s))
        t_s = max(t_s, now_s)
    planned_s = t_s
    ev = collision(agent, t_s)
    if ev is not None:
        if when != "boundary":
            raise CommandError("pricing_event", "activation at %d would fall in the pricing event %d..%d" % (t_s, ev[0], ev[1]))
        t_s = _clear_of_events(agent, t_s)
    await t.clear_of_app_flash()
    if t_s != planned_s:
        agent.platform.events.log(ACTIVATION_DEFERRED, t_s - planned_s)
    s["registers"] = registers
    s["ack"] = ack
    s["when"] = when
    s["activate_at_s"] = t_s
    t.save()
    agent.schedule_activation(t_s, when)
    return {"when": when, "activate_at_s": t_s, "deferred_s": t_s - planned_s,
            "boundary_s": t_s if when == "boundary" else None, "meter_time_s": now_s,
            "registers": registers, "ack": ack}


async def run_at(agent, t_s, when):
    """The scheduled activation's task: switch at t_s (past the close of the interval ending
    then, for a boundary), moved on past any pricing event scheduled meanwhile."""
    await asyncio.sleep_ms(_REPLY_MS)
    t = agent.transfer
    metering = agent.metering
    while True:
        if when == "boundary":
            # Just after the interval ending at t_s has closed and been written.
            while metering.open.start_s < t_s:
                try:
                    await asyncio.wait_for_ms(metering.closed.wait(), _TICK_MS)
                except asyncio.TimeoutError:
                    pass
            await agent.after_close()
        else:
            while True:
                left_ms = t_s * 1000 - agent.platform.board.clock.time_ms()
                if left_ms <= 0:
                    break
                await asyncio.sleep_ms(min(left_ms, _TICK_MS))
        ev = collision(agent, agent.now_s())
        if ev is None:
            break
        # An event scheduled after the request: move on to the first boundary after it.
        t_s, when = _clear_of_events(agent, agent.next_boundary_s(ev[1])), "boundary"
        t.state["activate_at_s"] = t_s
        t.state["when"] = when
        t.save()
        agent.platform.events.log(ACTIVATION_DEFERRED, t_s - agent.now_s())
    t.activating()
    agent.platform.activate(t.state["slot"])
