# The HAN task's jobs (han.py queues them): a join (open the window, then the comm test and the
# device's self-test, and the outcome recorded in the device table and told), a leave, and the
# health check's item. Run by the HAN's own task until its queue is empty; loaded for that and
# dropped after (loader.py), with the drivers the jobs need: each job goes to the driver of its
# device's technology, loaded the first time one is needed.
from micropython import const
import event_codes
import han_table

_HEALTH_PINGS = const(1)
# Why a join ended, as HAN_JOIN_FAILED's and HAN_ENROLLMENT's value (0: joined, HAN_ENROLLMENT only).
_JOINED = const(0)
_NO_JOIN = const(1)
_COMM_TEST = const(2)
_SELF_TEST = const(3)
_RESTARTED = const(4)


class _Drivers:
    """The drivers of the technologies this image has, on the one radio: each loaded the first
    time a job needs it and kept while the queue runs."""

    def __init__(self, radio):
        self.radio = radio
        self.techs = han_table.drivers()
        self._loaded = {}

    async def get(self, tech):
        d = self._loaded.get(tech)
        if d is None:
            d = self._loaded[tech] = (await han_table.driver(tech)).Driver(self.radio)
        return d


async def serve(m):
    han = m.han
    drivers = _Drivers(han.radio)
    while han.radio.receive() is not None:
        pass  # frames that came while no job listened (late answers, strays): stale now
    try:
        _tell_untold(m, han_table.load())
        while han.jobs:
            job = han.jobs[0]
            try:
                job[2] = await _JOBS[job[0]](m, drivers, job[1]) or "done"
            except (OSError, ValueError, KeyError, TypeError, MemoryError, ImportError) as e:
                job[2] = ("fail", "HAN job %s: %r" % (job[0], e), None)
            han.jobs.pop(0)
    finally:
        han_table.drop_drivers(drivers.techs)


async def _join(m, drivers, arg):
    eui, window_s = arg
    table = han_table.load()
    row = table.get(eui)
    if row is None or row["state"] != "joining":
        return  # removed, or enrolled again, since: that request has its own job
    driver = await drivers.get(row["tech"])
    taken = [r["short"] for r in table.values() if r["short"] is not None]
    # The window is the device's whole window_s from now, when it opens: a join queued behind
    # another's window is not left with what remains of its own.
    short, why = await driver.join(eui, bytes.fromhex(row["key"]), window_s, taken)
    outcome = _outcome(m, why)
    stage = _NO_JOIN
    if short is not None:
        outcome["joined"] = True
        row["short"] = short
        if row["kind"] == "unknown" and driver.heard_kind in han_table.KINDS:
            row["kind"] = driver.heard_kind
        ok, msg = await driver.comm_test(row)
        outcome["comm_test"] = "pass" if ok else "fail"
        stage = _COMM_TEST
        if ok:
            ok, msg = await driver.self_test(row)
            outcome["self_test"] = "pass" if ok else "fail"
            stage = _SELF_TEST
        outcome["ok"], outcome["message"] = ok, msg
        if ok:
            stage = _JOINED
    table = han_table.load()  # as stored now: a remove may have come while the window was open
    if table.get(eui, {}).get("key") != row["key"]:
        return
    row["state"] = "joined" if short is not None else "not_joined"
    row["outcome"] = outcome
    table[eui] = row
    _tell(m, table, [row], stage)


def _outcome(m, message):
    return {"at_s": m.board.clock.time_ms() // 1000, "joined": False, "comm_test": None, "self_test": None,
            "ok": False, "message": message}


def _tell(m, table, rows, stage):
    """Store the rows' outcomes, then tell each: the event, the display notice, and an alarm
    (HAN_ENROLLMENT, pushed to the host). The alarm is named after the outcome in the outbox's
    own write, and the row says it was told only after that: a power cut before the alarm has it
    posted by the next run (_tell_untold), one after it neither loses nor doubles it."""
    for r in rows:
        r["outcome"]["stage"] = stage
        r["outcome"]["told"] = False
    han_table.save(table)
    for r in rows:
        eui, kind = r["eui64"], r["kind"]
        if stage == _JOINED:
            m.p.events.log(event_codes.HAN_JOINED, r["short"])
            m.notices.show("Home device %s (%s) joined the meter" % (eui, kind))
        else:
            m.p.events.log(event_codes.HAN_JOIN_FAILED, stage)
            m.notices.show("Home device %s (%s) not enrolled: %s" % (eui, kind, r["outcome"]["message"]))
    _tell_untold(m, table)


def _tell_untold(m, table):
    """Post the alarm of each outcome stored but not yet told, one at a time: of the alarms the
    outbox names "han ...", it keeps the last, so no more than one may be posted but not marked."""
    for r in table.values():
        o = r["outcome"]
        if o and o.get("told") is False:
            m.outbox.post(event_codes.HAN_ENROLLMENT, o["stage"], "%s: %s" % (r["eui64"], o["message"] or "joined"),
                          None, "han %s %d" % (r["eui64"], o["at_s"]))
            o["told"] = True
            han_table.save(table)


async def _leave(m, drivers, arg):
    eui, short, key, tech = arg
    if tech in drivers.techs:  # else the key is gone all the same: the device cannot talk to the meter
        (await drivers.get(tech)).leave(eui, short, bytes.fromhex(key))


async def _check(m, drivers, _arg):
    """The health item: the radio answers, each enrolled device's technology has its driver in
    this image, and each joined device answers its own driver. Value: the devices answering."""
    if not drivers.techs:
        return "fail", "this image has no HAN driver", None
    if not await (await drivers.get(drivers.techs[0])).radio_ok():
        return "fail", "the HAN radio does not answer", None
    table = han_table.load()
    _restarted(m, table)
    no_driver = ["%s (%s)" % (r["eui64"], r["tech"]) for r in table.values() if r["tech"] not in drivers.techs]
    joined = [r for r in table.values() if r["state"] == "joined" and r["tech"] in drivers.techs]
    silent = []
    for r in joined:
        ok, _ = await (await drivers.get(r["tech"])).comm_test(r, _HEALTH_PINGS)
        if not ok:
            silent.append(r["eui64"])
    why = []
    if no_driver:
        why.append("no driver in this image for %s" % ", ".join(no_driver))
    if silent:
        why.append("%d of %d enrolled devices do not answer: %s" % (len(silent), len(joined), ", ".join(silent)))
    if why:
        return "fail", "; ".join(why), len(joined) - len(silent)
    return "pass", None, len(joined)


def _restarted(m, table):
    """Rows still joining with no join queued: the meter restarted while their window was open
    (the queue is not kept). Their outcome says so, rather than joining for ever."""
    queued = [j[1][0] for j in m.han.jobs if j[0] == "join"]
    stale = [r for r in table.values() if r["state"] == "joining" and r["eui64"] not in queued]
    for r in stale:
        r["state"] = "not_joined"
        r["outcome"] = _outcome(m, "the meter restarted while the join window was open: join again")
    if stale:
        _tell(m, table, stale, _RESTARTED)


_JOBS = {"join": _join, "leave": _leave, "check": _check}
