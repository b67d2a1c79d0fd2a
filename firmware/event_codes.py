# The application's event codes (FR14), logged through the platform's event log beside the
# platform's own (bootloader/eventlog.py): DLMS standard event log codes where one exists, ours
# from 108 and 130 to 159. Their names are in event_names.py, loaded only to read the log out.
from micropython import const

CLOCK_ADJUSTED_OLD = const(4)    # DLMS; stamped with the time before; value: change in s
CLOCK_ADJUSTED_NEW = const(5)    # DLMS; stamped with the time after; value: change in s
CLOCK_INVALID = const(6)         # DLMS; value: 0 before 2024, 1 behind the last interval, 2 leapt ahead
NV_MEMORY_ERROR = const(14)      # DLMS; value: damaged records found
MEASUREMENT_ERROR = const(16)    # DLMS; value: 0
INTERVAL_GAP = const(108)        # value: intervals closed late after a restart
HEALTH_FAILED = const(111)       # value: 1 critical, 2 important
UPGRADE_NOTICE = const(130)      # value: image size (FR33)
ACTIVATION_DEFERRED = const(131)  # value: seconds later than asked, for a pricing event (FR30)
INTERVALS_DROPPED = const(140)   # value: oldest interval records dropped to keep the quota
REGISTERS_RESET = const(141)     # value: delivered register before the reset, Wh
REGISTERS_RESET_RECEIVED = const(142)  # value: received register before the reset, Wh
STATE_CHANGED = const(143)       # value: meter state seq
RELAY_DISCONNECTED = const(144)  # value: 0
RELAY_CONNECTED = const(145)     # value: 0
RELAY_MISMATCH = const(146)      # value: latched position (1 closed); state says otherwise
HEALTH_PASSED = const(147)       # value: items checked
HEALTH_CRITICAL = const(148)     # value: index of the failed item (meter_state.HEALTH_ITEMS)
HEALTH_IMPORTANT = const(149)    # value: index of the failed item
LOAD_LIMIT_EXCEEDED = const(150)  # value: average power over the interval, W
FRONTEND_RESTARTED = const(151)  # value: mWh the front-end counted since it restarted
STATE_RECOVERED = const(152)     # value: 0 from the unrenamed copy, 1 factory settings
ALARMS_ACKED = const(153)        # value: alarms acknowledged
OUTBOX_OVERFLOW = const(154)     # value: seq of the alarm dropped unacknowledged
FIRMWARE_REVERTED = const(155)   # an alarm (DLMS has no code); value: cause (update_state.CAUSES)
HAN_JOINED = const(156)          # value: the device's short address
HAN_JOIN_FAILED = const(157)     # value: 1 did not join, 2 comm test failed, 3 self-test failed, 4 restarted
HAN_REMOVED = const(158)         # value: the device's short address (0: it never joined)
HAN_ENROLLMENT = const(159)      # an alarm: a join's outcome; value: 0 joined, else HAN_JOIN_FAILED's


def names(codes, default="event"):
    """{code: name} for any of the meter's codes, the platform's included; event_names.py
    loads for the call and leaves after (loader.py)."""
    import loader
    from bootloader.api import event_names

    return loader.call("event_names", "add", event_names(codes, default), codes)
