# The HAN task's jobs (han.py queues them): a join (open the window, then the comm test and the
# device's self-test, and the outcome recorded in the device table), a leave, and the health
# check's item. Run by the HAN's own task until its queue is empty; loaded for that and dropped
# after (loader.py), with the drivers it needs.
import time
from micropython import const
import event_codes
import han_table
import han_zigbee

DRIVERS = {han_zigbee.TECH: han_zigbee.Driver}  # han_table.DRIVERS names the same technologies
_HEALTH_PINGS = const(1)
# Why a join failed, as HAN_JOIN_FAILED's value.
_NO_JOIN = const(1)
_COMM_TEST = const(2)
_SELF_TEST = const(3)


async def serve(m):
    han = m.han
    driver = DRIVERS[han_zigbee.TECH](han.radio)  # the sim's one radio is a zigbee-se co-processor
    driver.drain()
    while han.jobs:
        job = han.jobs[0]
        try:
            job[2] = await _JOBS[job[0]](m, driver, job[1]) or "done"
        except (OSError, ValueError, KeyError, TypeError, MemoryError) as e:
            job[2] = ("fail", "HAN job %s: %r" % (job[0], e), None)
        han.jobs.pop(0)


async def _join(m, driver, arg):
    eui, window_s, asked_ms = arg
    table = han_table.load()
    row = table.get(eui)
    if row is None or row["state"] != "joining":
        return  # removed, or enrolled again, since: that request has its own job
    left_ms = window_s * 1000 - time.ticks_diff(time.ticks_ms(), asked_ms)
    taken = [r["short"] for r in table.values() if r["short"] is not None]
    short, why = await driver.join(eui, bytes.fromhex(row["key"]), max(left_ms, 0), taken, window_s)
    outcome = {"at_s": m.board.clock.time_ms() // 1000, "joined": short is not None, "comm_test": None,
               "self_test": None, "ok": False, "message": why}
    failed = _NO_JOIN
    if short is not None:
        row["short"] = short
        if row["kind"] == "unknown" and driver.heard_kind in han_table.KINDS:
            row["kind"] = driver.heard_kind
        ok, msg = await driver.comm_test(row)
        outcome["comm_test"] = "pass" if ok else "fail"
        failed = _COMM_TEST
        if ok:
            ok, msg = await driver.self_test(row)
            outcome["self_test"] = "pass" if ok else "fail"
            failed = _SELF_TEST
        outcome["ok"], outcome["message"] = ok, msg
    table = han_table.load()  # as stored now: a remove may have come while the window was open
    if table.get(eui, {}).get("key") != row["key"]:
        return
    row["state"] = "joined" if short is not None else "not_joined"
    row["outcome"] = outcome
    table[eui] = row
    han_table.save(table)
    if outcome["ok"]:
        m.p.events.log(event_codes.HAN_JOINED, short)
        m.notices.show("Home device %s (%s) joined the meter" % (eui, row["kind"]))
    else:
        m.p.events.log(event_codes.HAN_JOIN_FAILED, failed)
        m.notices.show("Home device %s (%s) not enrolled: %s" % (eui, row["kind"], outcome["message"]))


async def _leave(m, driver, arg):
    eui, short, key = arg
    driver.leave(eui, short, bytes.fromhex(key))


async def _check(m, driver, _arg):
    """The health item: the radio answers, each enrolled device's technology has its driver in
    this image, and each joined device answers. Value: the devices answering."""
    if not await driver.radio_ok():
        return "fail", "the HAN radio does not answer", None
    table = han_table.load()
    _restarted(m, table)
    no_driver = [r["eui64"] for r in table.values() if r["tech"] not in DRIVERS]
    if no_driver:
        return "fail", "no driver for the technology of %s" % ", ".join(no_driver), None
    joined = [r for r in table.values() if r["state"] == "joined"]
    silent = []
    for r in joined:
        ok, _ = await driver.comm_test(r, _HEALTH_PINGS)
        if not ok:
            silent.append(r["eui64"])
    if silent:
        return "fail", "%d of %d enrolled devices do not answer: %s" % (len(silent), len(joined), ", ".join(silent)), \
            len(joined) - len(silent)
    return "pass", None, len(joined)


def _restarted(m, table):
    """Rows still joining with no join queued: the meter restarted while their window was open
    (the queue is not kept). Their outcome says so, rather than joining for ever."""
    queued = [j[1][0] for j in m.han.jobs if j[0] == "join"]
    stale = [r for r in table.values() if r["state"] == "joining" and r["eui64"] not in queued]
    for r in stale:
        r["state"] = "not_joined"
        r["outcome"] = {"at_s": m.board.clock.time_ms() // 1000, "joined": False, "comm_test": None,
                        "self_test": None, "ok": False,
                        "message": "the meter restarted while the join window was open: join again"}
    if stale:
        han_table.save(table)


_JOBS = {"join": _join, "leave": _leave, "check": _check}
