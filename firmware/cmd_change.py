# The meter runtime's privileged commands: meter state changes, the register reset, time set,
# the relay, alarm acknowledgements, revert and allowing a rejected image again. Each runs inside
# an authenticated session (commands.py registers them privileged). Loaded for each request and
# dropped after it (loader.py).
import asyncio
from micropython import const
from bootloader.api import CommandError, choice, field, query
import event_codes

_VALID_FROM_S = const(1704067200)  # 2024-01-01
_VALID_UNTIL_S = const(0xFFFFFFFF)


async def set_state(m, payload):
    import state_edit
    h = state_edit.update(m.state, query(payload), m.metering.registers()[0] + m.metering.open.reset_mwh)
    return {"hash": h, "seq": m.state.seq}


async def reset_registers(m, _payload):
    import metering_reset
    return {"before": metering_reset.reset(m.metering)}


async def time_set(m, payload):
    """DLMS codes 4 and 5, stamped with the time before and after; the clock-set flag on the
    interval(s) it touches (metering_clock.was_set). Synchronising is the host's: it reads our
    time against its own and sets it when the offset is beyond its tolerance."""
    import metering_clock
    t_ms = field(query(payload), "time_ms", int, lo=_VALID_FROM_S * 1000, hi=_VALID_UNTIL_S * 1000)
    clock = m.board.clock
    old_ms = clock.time_ms()
    delta_s = max(-0x7FFFFFFF, min(0x7FFFFFFF, (t_ms - old_ms) // 1000))
    m.p.events.log(event_codes.CLOCK_ADJUSTED_OLD, delta_s)
    clock.set_time_ms(t_ms)
    split = metering_clock.was_set(m.metering, old_ms, t_ms)
    m.p.events.log(event_codes.CLOCK_ADJUSTED_NEW, delta_s)
    return {"old_ms": old_ms, "new_ms": t_ms, "delta_ms": t_ms - old_ms, "interval_split": split}


# -- the service relay (FR2) ----------------------------------------------------------------------
# A latching relay: a coil pulse moves it and it stays where it is without power. So its position
# is read at boot and no coil is pulsed then, nor during an upgrade, a revert or a power loss; only
# the authenticated relay command moves it. The meter state holds the position the utility asked
# for; when the latched one differs (a cut between the two, or a hand on the relay) that is
# reported, not "corrected": correcting it would be an actuation nobody asked for.
async def relay(m, payload):
    """Connect or disconnect the supply: the intent is stored first, then the coil pulsed, and
    only when the relay is not already there."""
    action = choice(query(payload), "action", ("connect", "disconnect"))
    hw = m.board.relay
    if hw is None:
        raise CommandError("no_relay", "this meter has no service relay")
    connect = action == "connect"
    moved = hw.closed() != connect
    import state_edit
    state_edit.set_relay(m.state, connect)
    if moved:
        hw.actuate(connect)
        m.p.events.log(event_codes.RELAY_CONNECTED if connect else event_codes.RELAY_DISCONNECTED, 0)
        m.notices.show("Supply reconnected" if connect else "Supply disconnected by your utility")
    return {"fitted": True, "latched": "connected" if hw.closed() else "disconnected",
            "commanded": "connected" if m.state.relay_connected else "disconnected", "agrees": True,
            "moved": moved}


async def ack(m, payload):
    seqs = field(query(payload), "seqs", list)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seqs):
        raise CommandError("bad_request", "seqs must be a list of alarm sequence numbers")
    return {"acknowledged": m.outbox.ack(seqs), "pending": len(m.outbox.pending)}


async def revert(m, _payload):
    if not m.p.can_revert():
        raise CommandError("no_previous", "no previous image to revert to")
    asyncio.create_task(_revert(m.p))
    return {"reverting": True}


async def _revert(p):
    await asyncio.sleep_ms(50)  # let the reply leave first
    p.revert()  # the platform stores the pre-switch snapshot first


async def unreject(m, payload):
    return {"unrejected": m.p.unreject(bytes(payload))}
