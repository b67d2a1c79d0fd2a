# The meter state as JSON (the read-state command). Loaded for it and dropped after.
from micropython import const
from meter_state import ALARM_CODES, HEALTH_ITEMS

LOAD_STATES = ("normal", "shed")
DG_STATES = ("allowed", "curtailed", "disconnected")
NEM_CHANNELS = ("delivered", "received", "net")
GRID_KINDS = ("shed", "cycle", "curtail-dg")
_RELAY = const(0)
_NEM_ON = const(7)
_NEM_CH = const(8)
_MULT = const(11)
_REPORT = const(20)
# (section, key, fixed index, kind): kind "b" bool, "i" int, or a tuple of names
FIELDS = (
    ("limiting", "enabled", 1, "b"), ("limiting", "limit_w", 2, "i"),
    ("load_control", "state", 3, LOAD_STATES), ("load_control", "level_pct", 4, "i"),
    ("dg_control", "state", 5, DG_STATES), ("dg_control", "limit_w", 6, "i"),
    ("pulse_output", "enabled", 9, "b"), ("pulse_output", "wh_per_pulse", 10, "i"),
    ("power_quality", "nominal_v", 12, "i"), ("power_quality", "sag_pct", 13, "i"),
    ("power_quality", "swell_pct", 14, "i"),
    ("prepayment", "enabled", 15, "b"), ("prepayment", "credit_wh", 16, "i"),
    ("prepayment", "emergency_wh", 17, "i"), ("prepayment", "low_credit_wh", 18, "i"),
)


def to_dict(st):
    f = st.fixed
    out = {"version": st.version, "seq": st.seq, "hash": st.hash(),
           "relay": {"connected": bool(f[_RELAY])},
           "nem": {"enabled": bool(f[_NEM_ON]), "channels": [n for i, n in enumerate(NEM_CHANNELS) if f[_NEM_CH] >> i & 1]},
           "multiplier": f[_MULT],
           "pricing_events": [{"start_s": e[0], "end_s": e[1], "tier": e[2]} for e in st.pricing],
           "grid_events": [{"start_s": e[0], "end_s": e[1], "kind": GRID_KINDS[e[2]], "level_pct": e[3]} for e in st.grid],
           "reporting": {"immediate": [c for i, c in enumerate(ALARM_CODES) if f[_REPORT] >> i & 1]},
           "health_severity": {n: st.severity(n, "default") for n in HEALTH_ITEMS}}
    for section, key, idx, kind in FIELDS:
        v = f[idx]
        out.setdefault(section, {})[key] = bool(v) if kind == "b" else kind[v] if isinstance(kind, tuple) else v
    return out
