# Authenticated changes to the meter state, validated whole before anything is stored (all or
# nothing), and the relay bit the relay command sets. A field's section, key, kind and range come
# from the table (state_schema.FIELDS). Loaded for those commands only.
from bootloader.api import CommandError
import event_codes
from meter_state import NAMES
from state_schema import BOOL, INT, ONE_OF, fields


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
        if section == "nem":
            state_lists.nem(f, value)
        elif section == "pricing_events":
            pricing = state_lists.events(value, "pricing event", state_lists.pricing_extra)
        elif section == "grid_events":
            grid = state_lists.events(value, "grid event", state_lists.grid_extra)
        elif section == "reporting":
            state_lists.report(f, value)
        elif section == "health_severity":
            state_lists.severities(f, value)
        else:
            _section(f, section, value)
            if section == "prepayment" and "credit_wh" in value:
                # consumption counts against the new credit from now
                f[NAMES.index("credit_base_mwh")] = lifetime_mwh
    return commit(st, f, pricing, grid)


def set_relay(st, connected):
    f = list(st.fixed)
    f[NAMES.index("relay")] = 1 if connected else 0
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
    # A section of plain fields (BOOL, INT, ONE_OF), or one field that is its section (key None).
    by_key = fields(section)
    if not by_key:
        raise _bad("unknown setting %r" % section)
    if None in by_key:
        _field(f, by_key[None], section, value)
        return
    if not isinstance(value, dict):
        raise _bad("%s must be an object" % section)
    for key, v in value.items():
        if key not in by_key:
            raise _bad("unknown setting %s.%s" % (section, key))
        _field(f, by_key[key], section + "." + key, v)


def _field(f, spec, what, v):
    idx, kind, arg = spec
    if kind == BOOL:
        if not isinstance(v, bool):
            raise _bad("%s must be true or false" % what)
        f[idx] = 1 if v else 0
    elif kind == INT:
        f[idx] = _int(v, arg[0], arg[1], what)
    elif kind == ONE_OF and v in arg:
        f[idx] = arg.index(v)
    elif kind == ONE_OF:
        raise _bad("%s must be one of %s" % (what, ", ".join(arg)))
    else:  # a SET or EACH: its section has a check of its own (state_lists.py)
        raise _bad("unknown setting %s" % what)
