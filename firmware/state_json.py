# The meter state as JSON (the read-state command), in the shape a change takes: every field the
# table (state_schema.FIELDS) shows, under its section and key. Loaded for it and dropped after.
from state_schema import BOOL, EACH, FIELDS, GRID_KINDS, ONE_OF, REPORT_INVERTED, SET


def _shown(kind, arg, v):
    if kind == BOOL:
        return bool(v)
    if kind == ONE_OF:
        return arg[v]
    if kind == SET:
        return [n for i, n in enumerate(arg) if v >> i & 1]
    if kind == EACH:
        return {n: arg[1][v >> 2 * i & 3] for i, n in enumerate(arg[0])}
    return v


def to_dict(st):
    f = st.fixed
    out = {"version": st.version, "seq": st.seq, "hash": st.hash(),
           "pricing_events": [{"start_s": e[0], "end_s": e[1], "tier": e[2]} for e in st.pricing],
           "grid_events": [{"start_s": e[0], "end_s": e[1], "kind": GRID_KINDS[e[2]], "level_pct": e[3]} for e in st.grid]}
    for i, (name, _, _, section, key, kind, arg) in enumerate(FIELDS):
        if section is None:
            continue
        v = _shown(kind, arg, f[i] ^ REPORT_INVERTED if name == "report_mask" else f[i])
        if key is None:
            out[section] = v
        else:
            out.setdefault(section, {})[key] = v
    return out
