# The meter state's fixed fields, in stored order: the one table that the record's layout and
# factory settings (meter_state.py), its JSON view (state_json.py) and the checks on a change
# (state_edit.py, state_lists.py) all come from. Loaded only while one of those needs it: the
# running meter keeps what meter_state.py takes from it at import (the struct format, the names,
# the factory values and the vocabularies below), not the table.
#
# The rows never change or move: existing meters' records and state hashes are made of this
# layout. A newer version's fields go after the events, where older images keep them untouched.
from micropython import const
import event_codes

# How a field shows in the JSON view and how a change to it is checked.
BOOL = const(0)    # true/false
INT = const(1)     # a whole number from lo to hi
ONE_OF = const(2)  # one of the names, stored as its index
SET = const(3)     # any of the names, stored as bits in their order
EACH = const(4)    # each name of the first tuple maps to one of the second's: 2 bits each
HIDDEN = const(5)  # the meter's own bookkeeping: not shown, not set

LOAD_STATES = ("normal", "shed")
DG_STATES = ("allowed", "curtailed", "disconnected")
NEM_CHANNELS = ("delivered", "received", "net")
GRID_KINDS = ("shed", "cycle", "curtail-dg")
# Health items, in the order their severities are packed (2 bits each; 0 = the item's default).
HEALTH_ITEMS = ("metrology", "clock", "storage", "data", "registers", "meter_state", "link",
                "han", "nan", "heap", "flash")
SEVERITIES = ("default", "critical", "important", "info")
# Alarm codes the reporting policy covers, in the order of the report mask's bits; a set bit
# pushes that alarm at once, a clear one lets it wait for the next scheduled read.
ALARM_CODES = (event_codes.HEALTH_CRITICAL, event_codes.HEALTH_IMPORTANT, event_codes.RELAY_MISMATCH,
               event_codes.NV_MEMORY_ERROR, event_codes.MEASUREMENT_ERROR, event_codes.CLOCK_INVALID,
               event_codes.STATE_RECOVERED, event_codes.LOAD_LIMIT_EXCEEDED, event_codes.INTERVALS_DROPPED,
               event_codes.FRONTEND_RESTARTED, event_codes.FIRMWARE_REVERTED)
# Bits of the report mask stored inverted (set: waits for the next read): the revert alarm's,
# appended after meters had stored their masks. Every record made before it, the factory record
# included, holds that bit clear; read inverted, clear means pushed at once, the right default
# for a revert. So no stored record changes by a bit (nor its hash), and a meter that never
# chose, new or old, pushes a revert at once. The policy is the stored mask XOR this.
REPORT_INVERTED = 1 << ALARM_CODES.index(event_codes.FIRMWARE_REVERTED)

# (name, struct code, factory value, section, key, kind, arg). Section and key place a field in
# the JSON view and in a change (no section: hidden; no key: the section is the value itself);
# arg is an INT's (lo, hi), or the names of a ONE_OF, SET or EACH. The factory settings: supply
# connected, nothing limited or scheduled, the delivered channel, 1 Wh per pulse, 230 V +-10 %,
# and the health, relay, memory, measurement, clock, state and revert alarms pushed at once (the
# revert's bit is stored inverted: REPORT_INVERTED).
FIELDS = (
    ("relay", "B", 1, "relay", "connected", BOOL, None),  # moved only by the relay command
    ("limit_on", "B", 0, "limiting", "enabled", BOOL, None),
    ("limit_w", "I", 0, "limiting", "limit_w", INT, (0, 1000000)),
    ("load_state", "B", 0, "load_control", "state", ONE_OF, LOAD_STATES),
    ("load_level_pct", "B", 0, "load_control", "level_pct", INT, (0, 100)),
    ("dg_state", "B", 0, "dg_control", "state", ONE_OF, DG_STATES),
    ("dg_limit_w", "I", 0, "dg_control", "limit_w", INT, (0, 1000000)),
    ("nem_on", "B", 0, "nem", "enabled", BOOL, None),
    ("nem_channels", "B", 1, "nem", "channels", SET, NEM_CHANNELS),
    ("pulse_on", "B", 0, "pulse_output", "enabled", BOOL, None),
    ("wh_per_pulse", "H", 1, "pulse_output", "wh_per_pulse", INT, (1, 65535)),
    ("multiplier", "H", 1, "multiplier", None, INT, (1, 65535)),
    ("nominal_v", "H", 230, "power_quality", "nominal_v", INT, (50, 1000)),
    ("sag_pct", "B", 10, "power_quality", "sag_pct", INT, (1, 99)),
    ("swell_pct", "B", 10, "power_quality", "swell_pct", INT, (1, 99)),
    ("prepay_on", "B", 0, "prepayment", "enabled", BOOL, None),
    ("credit_wh", "i", 0, "prepayment", "credit_wh", INT, (-2000000000, 2000000000)),
    ("emergency_wh", "I", 0, "prepayment", "emergency_wh", INT, (0, 2000000000)),
    ("low_credit_wh", "I", 0, "prepayment", "low_credit_wh", INT, (0, 2000000000)),
    # Lifetime delivered mWh when the credit was set: the balance counts down from there, so
    # the record does not change with consumption.
    ("credit_base_mwh", "q", 0, None, None, HIDDEN, None),
    ("report_mask", "I", 0x7F, "reporting", "immediate", SET, ALARM_CODES),
    ("severities", "I", 0, "health_severity", None, EACH, (HEALTH_ITEMS, SEVERITIES)),
    # How many pricing and grid events follow the fixed fields.
    ("n_pricing", "B", 0, None, None, HIDDEN, None),
    ("n_grid", "B", 0, None, None, HIDDEN, None),
)


def fields(section):
    """{key: (index, kind, arg)} of the fields a section holds."""
    return {key: (i, kind, arg) for i, (_, _, _, s, key, kind, arg) in enumerate(FIELDS) if s == section}
