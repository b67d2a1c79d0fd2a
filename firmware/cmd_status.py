# Status and the interval read: the host's most frequent requests, yet no code the heap need
# hold between them. Loaded for each request and dropped after it (app.py).
import gc
import sys
import time
from micropython import const
from bootloader import api
from bootloader.api import field, query
import upgrade_notice
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
        stored = api.update_state()
        s = stored.load()
        if s["status"] != api.INITIATED:
            return stored.summary(s)
    return (await m.updates()).transfer.public_state()


async def status(m, _payload):
    p = m.p
    out = p.status()
    out.update({
        "register_wh": m.metering.live_register_mwh() / 1000,
        "register_mwh": m.metering.live_register_mwh(),
        "register_received_mwh": m.metering.registers()[1],
        "state_hash": m.state.hash(),
        "alarms_pending": len(m.outbox.pending),
        "uptime_s": time.ticks_diff(time.ticks_ms(), m.started_ms) // 1000,
        "time_s": m.board.clock.time_ms() // 1000,
        "interval_s": m.metering.interval_s,
        "health": m.health,
        "update": await _update(m),
        "metering": {"closes": m.metering.closes, "late_ms": m.metering.late_ms},
        "link_faults": m.link.faults,
        "heap": {"free": gc.mem_free(), "used": gc.mem_alloc(), "peak_used": m.heap_peak,
                 "peak_live": m.heap_peak_live, "board_models": getattr(m.board, "heap_models", 0),
                 "modules": len(sys.modules)},  # code the heap holds: a read leaves it as it was
    })
    return out


async def update_state(m, _payload):
    """The update's state and the last upgrade notice (UPD_STATE), as status reads them."""
    out = await _update(m)
    out["notice"] = m.agent.notice if m.agent is not None else upgrade_notice.load()
    return out


async def intervals(m, payload):
    # Rows rather than objects: a page of 20 stays well inside one frame. `more` says
    # whether records follow; the host pages on from the last seq it got.
    q = query(payload)
    limit = max(1, min(field(q, "limit", int, _INTERVAL_PAGE), _INTERVAL_PAGE))
    recs, more = m.metering.log.read(field(q, "since_seq", int, 0), limit, field(q, "since_s", int, 0))
    return {"fields": _IV_FIELDS, "flag_names": FLAG_NAMES, "more": more,
            "rows": [r[:8] for r in recs], "first_seq": m.metering.log.first_seq}
