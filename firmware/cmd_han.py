# The HAN's link commands: HAN_JOIN and HAN_REMOVE (privileged: they change the device table) and
# HAN_TABLE (open: a read, without keys). A join checks what it is given, stores the device with
# its key and queues the join for the HAN task (han.py), which opens the window; the device then
# joins with no further step, and the task records the outcome. Loaded for each request and
# dropped after it (loader.py).
from micropython import const
from bootloader.api import CommandError, choice, field, query
import event_codes
import han_table

_MAX_WINDOW_S = const(254)  # Zigbee's longest permit-join


def _radio(m):
    if m.han.radio is None:
        raise CommandError("han_no_radio", "this meter has no HAN radio fitted")


async def join(m, payload):
    q = query(payload)
    _radio(m)
    eui = han_table.eui64(field(q, "eui64", str))
    tech = field(q, "tech", str, "zigbee-se")
    have = han_table.drivers()
    if tech not in have:
        bridge = "join the device through a bridge to %s, or " % " or ".join(have) if have else ""
        raise CommandError("han_unknown_tech", "this meter has no driver for %s (it has %s): %sfit a meter that "
                           "supports %s" % (tech, ", ".join(have) or "none", bridge, tech))
    code = han_table.install_code(field(q, "install_code", str))
    window_s = field(q, "window_s", int, 180, lo=1, hi=_MAX_WINDOW_S)
    kind = choice(q, "kind", han_table.KINDS, "unknown") if "kind" in q else "unknown"
    try:
        key = (await han_table.driver(tech)).link_key(code)  # each technology derives its own
    finally:
        han_table.drop_drivers(have)
    table = han_table.load()
    table[eui] = {"eui64": eui, "tech": tech, "kind": kind, "short": None, "state": "joining",
                  "key": key.hex(), "enrolled_s": m.board.clock.time_ms() // 1000,
                  "window_s": window_s, "outcome": None}
    m.han.submit("join", (eui, window_s))
    han_table.save(table)
    return han_table.public(table[eui])


async def remove(m, payload):
    """Unenroll: the row and its key leave the table on flash now; the device is told to leave."""
    eui = han_table.eui64(field(query(payload), "eui64", str))
    table = han_table.load()
    row = table.pop(eui, None)
    if row is None:
        raise CommandError("han_not_enrolled", "no device %s is enrolled on this meter" % eui)
    han_table.save(table)
    if row["short"] is not None and m.han.radio is not None:
        try:
            m.han.submit("leave", (eui, row["short"], row["key"], row["tech"]))
        except CommandError:
            pass  # the key is gone all the same: the device can no longer talk to the meter
    m.p.events.log(event_codes.HAN_REMOVED, row["short"] or 0)
    return {"eui64": eui, "removed": True, "key_erased": True}


async def table(m, _payload):
    rows = han_table.load()
    return {"radio": m.han.radio is not None, "drivers": han_table.drivers(), "jobs": len(m.han.jobs),
            "devices": [han_table.public(rows[k]) for k in sorted(rows)]}
