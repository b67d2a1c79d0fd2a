# Authenticated changes to the meter state, validated whole before anything is stored (all or
# nothing), and the relay bit the relay command sets. Loaded for those commands only.
from micropython import const
from bootloader.api import CommandError
import event_codes
from state_json import FIELDS

# Fixed-field indexes (meter_state.FIXED).
_RELAY = const(0)
_MULT = const(11)
_PP_CREDIT = const(16)
_PP_BASE = const(19)
_REPORT = const(20)
_SEVERITY = const(21)

# Allowed ranges of the integer settings, by fixed index (state_json.FIELDS names them).
_RANGE = {2: (0, 1000000), 4: (0, 100), 6: (0, 1000000), 10: (1, 65535), 12: (50, 1000), 13: (1, 99),
          14: (1, 99), _PP_CREDIT: (-2000000000, 2000000000), 17: (0, 2000000000), 18: (0, 2000000000)}
_SECTIONS = ("limiting", "load_control", "dg_control", "pulse_output", "power_quality", "prepayment")


def _bad(msg):
    return CommandError("bad_request", "meter state: " + msg)


def _int(v, lo, hi, what):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad("%s must be a whole number from %d to %d" % (what, lo, hi))
    return v


def update(st, changes, lifetime_mwh=0):
    """Apply a partial change in the to_dict() shape; all or nothing. Returns the new hash."""
    if not isinstance(changes, dict):
        raise _bad("changes must be an object")
    import state_lists
    f = list(st.fixed)
    pricing, grid = st.pricing, st.grid
    for section, value in changes.items():
        if section == "relay":
            raise _bad("the relay moves only by the relay command")
        if section == "multiplier":
            f[_MULT] = _int(value, 1, 65535, "multiplier")
        elif section == "nem":
            state_lists.nem(f, value)
        elif section == "pricing_events":
            pricing = state_lists.events(value, "pricing event", state_lists.pricing_extra)
        elif section == "grid_events":
            grid = state_lists.events(value, "grid event", state_lists.grid_extra)
        elif section == "reporting":
            f[_REPORT] = state_lists.report(value)
        elif section == "health_severity":
            f[_SEVERITY] = state_lists.severities(f[_SEVERITY], value)
        elif section in _SECTIONS:
            _section(f, section, value)
            if section == "prepayment" and "credit_wh" in value:
                f[_PP_BASE] = lifetime_mwh  # consumption counts against the new credit from now
        else:
            raise _bad("unknown setting %r" % section)
    return commit(st, f, pricing, grid)


def set_relay(st, connected):
    f = list(st.fixed)
    f[_RELAY] = 1 if connected else 0
    return commit(st, f, st.pricing, st.grid)


def commit(st, f, pricing, grid):
    """Store new contents whole, or nothing at all; logged when anything changed."""
    old = (st.fixed, st.pricing, st.grid, st.body, st.seq)
    st.fixed, st.pricing, st.grid = f, pricing, grid
    body = st.encode()
    if body == st.body:
        return st.hash()  # nothing changed: nothing written, nothing logged
    st.body = body
    st.seq += 1
    try:
        st.save()
    except OSError as e:
        st.fixed, st.pricing, st.grid, st.body, st.seq = old
        raise CommandError("storage", "meter state not saved: %s" % e)
    if st.events:
        st.events.log(event_codes.STATE_CHANGED, st.seq)
    return st.hash()


def _section(f, section, value):
    if not isinstance(value, dict):
        raise _bad("%s must be an object" % section)
    for key, v in value.items():
        spec = [s for s in FIELDS if s[0] == section and s[1] == key]
        if not spec:
            raise _bad("unknown setting %s.%s" % (section, key))
        _, _, idx, kind = spec[0]
        if kind == "b":
            if not isinstance(v, bool):
                raise _bad("%s.%s must be true or false" % (section, key))
            f[idx] = 1 if v else 0
        elif kind == "i":
            f[idx] = _int(v, _RANGE[idx][0], _RANGE[idx][1], section + "." + key)
        elif v in kind:
            f[idx] = kind.index(v)
        else:
            raise _bad("%s.%s must be one of %s" % (section, key, ", ".join(kind)))


