# Meter state changes to the listed settings: NEM channels, pricing and grid events, the
# reporting policy and health severities (see state_edit.py). Loaded with it, dropped after.
from micropython import const
from meter_state import NAMES
from state_schema import ALARM_CODES, GRID_KINDS, HEALTH_ITEMS, NEM_CHANNELS, REPORT_INVERTED, SEVERITIES
from state_edit import _bad, _int  # always loaded first: only state_edit imports this module

MAX_EVENTS = const(8)


def nem(f, value):
    if not isinstance(value, dict):
        raise _bad("nem must be an object")
    for key, v in value.items():
        if key == "enabled" and isinstance(v, bool):
            f[NAMES.index("nem_on")] = 1 if v else 0
        elif key == "channels" and isinstance(v, list) and all(c in NEM_CHANNELS for c in v):
            f[NAMES.index("nem_channels")] = sum(1 << NEM_CHANNELS.index(c) for c in set(v))
        else:
            raise _bad("nem takes enabled (true/false) and channels (of %s)" % ", ".join(NEM_CHANNELS))


def pricing_extra(e):
    return (_int(e.get("tier", 1), 0, 255, "pricing event tier"),)


def grid_extra(e):
    kind = e.get("kind", "shed")
    if kind not in GRID_KINDS:
        raise _bad("grid event kind must be one of " + ", ".join(GRID_KINDS))
    return GRID_KINDS.index(kind), _int(e.get("level_pct", 100), 0, 100, "grid event level_pct")


def events(value, what, extra):
    if not isinstance(value, list) or len(value) > MAX_EVENTS:
        raise _bad("%ss must be a list of at most %d" % (what, MAX_EVENTS))
    out = []
    for e in value:
        if not isinstance(e, dict):
            raise _bad(what + " must be an object with start_s and end_s")
        start = _int(e.get("start_s"), 0, 0xFFFFFFFF, what + " start_s")
        end = _int(e.get("end_s"), 0, 0xFFFFFFFF, what + " end_s")
        if end <= start:
            raise _bad(what + " must end after it starts")
        out.append((start, end) + extra(e))
    out.sort()
    return out


def report(f, value):
    codes = value.get("immediate") if isinstance(value, dict) else None
    if not isinstance(codes, list) or any(c not in ALARM_CODES for c in codes):
        raise _bad("reporting.immediate must list alarm codes among %s" % (ALARM_CODES,))
    f[NAMES.index("report_mask")] = sum(1 << ALARM_CODES.index(c) for c in set(codes)) ^ REPORT_INVERTED


def severities(f, value):
    if not isinstance(value, dict):
        raise _bad("health_severity must map health items to severities")
    at = NAMES.index("severities")
    for item, sev in value.items():
        if item not in HEALTH_ITEMS or sev not in SEVERITIES:
            raise _bad("health_severity maps %s to %s" % ("/".join(HEALTH_ITEMS), "/".join(SEVERITIES)))
        i = HEALTH_ITEMS.index(item)
        f[at] = f[at] & ~(3 << 2 * i) | SEVERITIES.index(sev) << 2 * i
