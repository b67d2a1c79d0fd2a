# Health check (FR12): non-destructive, run after every boot and on request at any time.
# Each item answers pass, fail or absent (an interface the board does not have: not a pass);
# its severity, from the meter state's settings, decides what a failure does after a boot:
# critical -> revert a trial image, important -> report and stay, info -> report only. Loaded
# for the check, with the items about the data (health_data.py), and dropped after (loader.py).
import asyncio
import gc
import io
import os
import time
from micropython import const
from bootloader.api import CommandError, field, framing, query
from meter_state import HEALTH_ITEMS
import health_data

CRITICAL = "critical"
IMPORTANT = "important"
INFO = "info"
PASS = "pass"
FAIL = "fail"
ABSENT = "absent"
_VALID_FROM_S = const(1704067200)  # 2024-01-01: an RTC that lost its time reads earlier
_SETTLE_MS = const(1100)           # the front-end accumulates whole seconds
_MAX_POWER_W = const(100000)       # more than any single-phase service delivers
_CLOCK_TOLERANCE_MS = const(2000)
_MIN_FREE_HEAP_PCT = const(25)
_MIN_FREE_FLASH_KB = const(64)
_HAN_WAIT_MS = const(6000)
_HAN_POLL_MS = const(50)
_SCRATCH = "/data/.health"


async def _clock(m, ctx):
    now_ms = ctx["now_ms"]
    last = m.metering.log.last
    if now_ms // 1000 < _VALID_FROM_S:
        return FAIL, "clock reads %d, before 2024: it lost its time" % (now_ms // 1000), None
    if last and now_ms // 1000 < last[1]:
        return FAIL, "clock is behind the last interval (%d)" % last[1], None
    host_ms = ctx.get("host_time_ms")
    if host_ms is None:
        return PASS, None, None
    offset_ms = now_ms - host_ms
    tol_ms = m.board.defaults.get("clock_tolerance_ms", _CLOCK_TOLERANCE_MS)
    if abs(offset_ms) > tol_ms:
        return FAIL, "clock is %d ms off the host's (tolerance %d ms)" % (offset_ms, tol_ms), offset_ms
    return PASS, None, offset_ms


async def _metrology(m, ctx):
    # The chip answers on its bus: without that, a front-end reading no energy could be a
    # missing chip rather than a premises drawing nothing.
    fault = m.board.metrology_fault()
    if fault:
        return FAIL, fault, None
    read = m.board.energies_mwh
    a, a_rx = read()
    t0 = time.ticks_ms()
    await asyncio.sleep_ms(_SETTLE_MS)
    b, b_rx = read()
    dt_ms = time.ticks_diff(time.ticks_ms(), t0)
    adv_mwh = (b - a) + (b_rx - a_rx)
    if b < a or b_rx < a_rx:
        return FAIL, "front-end reading went backwards", adv_mwh
    if adv_mwh * 3600 > _MAX_POWER_W * (dt_ms + 1000):
        return FAIL, "front-end advanced %d mWh in %d ms: implausible" % (adv_mwh, dt_ms), adv_mwh
    if adv_mwh == 0:
        # A premises with nothing switched on (vacant, or PV just covering the load) shows no
        # energy either way, for days if it stays so: that is a reading, not a fault.
        return PASS, "no energy flowed: no load on the premises", 0
    return PASS, None, adv_mwh


async def _storage(m, ctx):
    os.statvfs("/")  # the filesystem answers (an OSError fails the item)
    if not ctx["at_boot"]:
        # On request a read changes nothing on flash: the write probe's verdict is the boot's.
        boot = [h for h in m.health or () if h["check"] == "storage"]
        if boot and not boot[0]["ok"]:
            return FAIL, "at boot: %s" % boot[0]["message"], None
        return PASS, None, None
    if m.agent is not None and m.agent.transfer.receiving():
        # Flash work while a download's window arrives would lose its bytes on a UART link.
        return PASS, "write probe skipped: a download window was arriving", None
    probe = b"meterfw-health %d" % ctx["now_ms"]
    with open(_SCRATCH, "wb") as f:
        f.write(probe)
    with open(_SCRATCH, "rb") as f:
        ok = f.read() == probe
    os.remove(_SCRATCH)
    return (PASS, None, None) if ok else (FAIL, "scratch write does not read back", None)


async def _link(m, ctx):
    probe = b"loopback %d" % ctx["now_ms"]
    d, wire = framing.Decoder(len(probe)), io.BytesIO()
    framing.write(wire, 0x00, 0x5A, probe)
    d.feed(wire.getvalue())
    f = d.next()
    if f is None or bytes(f[2]) != probe or d.next() is not None:
        return FAIL, "frame loopback failed", None
    return PASS, None, m.link.requests


async def _nan(m, ctx):
    """The network link: the board's NAN interface answers, where the board reports on one, and
    the image's driver has its link up (nan.py): for a new radio profile, admitted by the
    network's collector within a bounded wait. Critical: a meter that cannot be reached needs a
    truck, so an image whose link does not come up is reverted."""
    fn = m.board.interface_checks().get("nan")
    msg = fn and fn()
    if msg:
        return FAIL, msg, None
    import nan
    return await nan.check(m)


async def _han(m, ctx):
    """The HAN radio answers, its drivers are in the image and the enrolled devices answer: the
    HAN's own task checks (han_jobs.py), between its other jobs; a check that waits longer than
    _HAN_WAIT_MS says the HAN is busy rather than hold the health check up."""
    if m.board.han_radio is None:
        return ABSENT, "not fitted on this board", None
    try:
        job = m.han.submit("check")
    except CommandError:
        return PASS, "not checked now: the HAN's queue is full", None
    t0 = time.ticks_ms()
    while job[2] is None and time.ticks_diff(time.ticks_ms(), t0) < _HAN_WAIT_MS:
        await asyncio.sleep_ms(_HAN_POLL_MS)
    return job[2] or (PASS, "not checked now: the HAN is busy enrolling a device", None)


async def _heap(m, ctx):
    gc.collect()
    free = gc.mem_free()
    pct = free * 100 // (free + gc.mem_alloc())
    need = m.board.defaults.get("min_free_heap_pct", _MIN_FREE_HEAP_PCT)
    if pct < need:
        return FAIL, "%d%% of the heap free, below %d%%" % (pct, need), free
    return PASS, None, free


async def _flash(m, ctx):
    st = os.statvfs("/")
    free_kb = st[0] * st[3] // 1024
    need = m.board.defaults.get("min_free_flash_kb", _MIN_FREE_FLASH_KB)
    if free_kb < need:
        return FAIL, "%d KiB of flash free, below %d KiB" % (free_kb, need), free_kb
    return PASS, None, free_kb


# (item, default severity, check). A check is called as check(app, ctx) and answers
# (status, message, value), or just a message (None when it passes). Items named in
# meter_state.HEALTH_ITEMS take their severity from the meter state when it sets one.
CHECKS = (
    ("metrology", CRITICAL, _metrology), ("clock", IMPORTANT, _clock), ("storage", CRITICAL, _storage),
    ("data", IMPORTANT, health_data.data), ("registers", CRITICAL, health_data.registers),
    ("meter_state", CRITICAL, health_data.meter_state), ("link", IMPORTANT, _link),
    ("han", IMPORTANT, _han), ("nan", CRITICAL, _nan),
    ("heap", IMPORTANT, _heap), ("flash", IMPORTANT, _flash),
)


async def run(m, host_time_ms=None, at_boot=False):
    """Every item: [(name, severity, status, message, value)]. `m` is the application (board,
    metering, state, outbox, link). The clock's offset from the host is taken against the
    meter's time when the request arrived. Only the check at boot writes flash (the storage
    probe); on request, anyone may ask, and the check only reads."""
    ctx = {"now_ms": m.board.clock.time_ms(), "host_time_ms": host_time_ms, "at_boot": at_boot}
    results = []
    for name, severity, check in CHECKS:
        try:
            r = await check(m, ctx)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, MemoryError) as e:
            r = FAIL, "%s: %r" % (name, e), None
        if r is None or isinstance(r, str):
            r = (FAIL if r else PASS), r, None
        if name in HEALTH_ITEMS:
            severity = m.state.severity(name, severity)
        results.append((name, severity, r[0], r[1], r[2]))
    return results


async def request(m, payload):
    """HEALTH: the check on request, the clock's offset taken against host_time_ms if given."""
    results = await run(m, field(query(payload), "host_time_ms", int, None, lo=0))
    items = [{"check": n, "severity": s, "status": st, "ok": st != FAIL, "message": msg, "value": v}
             for n, s, st, msg, v in results]
    return {"items": items, "ok": all(i["ok"] for i in items if i["severity"] != INFO)}
