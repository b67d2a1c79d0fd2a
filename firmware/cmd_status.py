# Status and the update's state: the host's most frequent requests, yet no code the heap need
# hold between them. Loaded for each request and dropped after it (loader.py).
import gc
import sys
import time
from bootloader import api
import upgrade_notice


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
    reg, reg_rx, _, _ = m.metering.registers()
    out = p.status()
    out.update({
        "active_image_id": p.image_id.hex(),  # what a delta must be made against
        "register_wh": reg / 1000,
        "register_mwh": reg,
        "register_received_mwh": reg_rx,
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
                 "peak_live": m.heap_peak_live, "board_models": m.board.heap_models,
                 "modules": len(sys.modules)},  # code the heap holds: a read leaves it as it was
    })
    return out


async def update_state(m, _payload):
    """The update's state and the last upgrade notice (UPD_STATE), as status reads them."""
    out = await _update(m)
    out["notice"] = m.agent.notice if m.agent is not None else upgrade_notice.load()
    return out

