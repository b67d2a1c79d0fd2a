# Status and the interval read: the host's most frequent requests, yet no code the heap need
# hold between them. Loaded for each request and dropped after it (app.py).
import gc
import sys
import time
from micropython import const
from bootloader.bootctl import SLOT_NAMES
from bootloader.protocol import field, query
from intervals import FLAG_NAMES

# A page small enough that a reply stays near 2 KiB: the host's frame limit, and the heap's.
_INTERVAL_PAGE = const(20)
_IV_FIELDS = ("seq", "start", "duration_s", "flags", "energy_mwh", "received_mwh", "register_mwh",
              "register_received_mwh")


async def _update(m):
    # A download under way reports its grant, which takes the transfer's code; any other state
    # is read from flash without loading the update machinery: a read leaves nothing resident.
    # (A loaded agent's transfer has the stored state module already: imported only here, it
    # is not loaded a second time.)
    if m.agent is None:
        from bootloader import update_state

        s = update_state.load()
        if s["status"] != update_state.INITIATED:
            return update_state.summary(s)
    return (await m.updates()).transfer.public_state()


async def status(m, _payload):
    p = m.p
    return {
        "board": m.board.name,
        "serial": p.identity.get("serial"),
        "active_slot": SLOT_NAMES[p.slot],
        "active_version": p.manifest["version"],
        "confirmed": p.bcb.confirmed,
        "trial": p.in_trial,
        "slots": p.slot_versions(),
        "register_wh": m.metering.live_register_mwh() / 1000,
        "register_mwh": m.metering.live_register_mwh(),
        "register_received_mwh": m.metering.registers()[1],
        "state_hash": m.state.hash(),
        "alarms_pending": len(m.outbox.pending),
        "uptime_s": time.ticks_diff(time.ticks_ms(), m.started_ms) // 1000,
        "boot_reason": p.boot_reason,
        "time_s": m.board.clock.time_ms() // 1000,
        "interval_s": m.metering.interval_s,
        "bootloader_version": p.bootloader_version,
        "security_floor": p.bcb.floor,
        "can_revert": p.can_revert(),  # a previous image that reads and is not below the floor
        "rejected": [r.hex() for r in p.bcb.rejected],
        "health": m.health,
        "update": await _update(m),
        "metering": {"closes": m.metering.closes, "late_ms": m.metering.late_ms},
        "link_faults": m.link.faults,
        "heap": {"free": gc.mem_free(), "used": gc.mem_alloc(), "peak_used": m.heap_peak,
                 "peak_live": m.heap_peak_live, "board_models": getattr(m.board, "heap_models", 0),
                 "modules": len(sys.modules)},  # code the heap holds: a read leaves it as it was
    }


async def update_state(m, _payload):
    """The update's state and the last upgrade notice (UPD_STATE), as status reads them."""
    out = await _update(m)
    if m.agent is not None:
        out["notice"] = m.agent.notice
    else:
        from bootloader import update_state

        out["notice"] = update_state.load_notice()
    return out


async def intervals(m, payload):
    # Rows rather than objects: a page of 20 stays well inside one frame. `more` says
    # whether records follow; the host pages on from the last seq it got.
    q = query(payload)
    limit = max(1, min(field(q, "limit", int, _INTERVAL_PAGE), _INTERVAL_PAGE))
    recs, more = m.metering.log.read(field(q, "since_seq", int, 0), limit, field(q, "since_s", int, 0))
    return {"fields": _IV_FIELDS, "flag_names": FLAG_NAMES, "more": more,
            "rows": [r[:8] for r in recs], "first_seq": m.metering.log.first_seq}
