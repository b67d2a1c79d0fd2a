# Names of the application's event codes (event_codes.py). Loaded for a read and forgotten after it
# (event_codes.names, loader.py): the names stay out of the heap while the meter meters.
NAMES = {
    4: "clock adjusted (old time)", 5: "clock adjusted (new time)", 6: "clock invalid",
    14: "non-volatile memory error", 16: "measurement system error",
    108: "intervals closed after power-down", 111: "health check failed",
    130: "upgrade available", 131: "activation deferred for a pricing event",
    140: "interval records dropped (quota)", 141: "registers reset (delivered)",
    142: "registers reset (received)", 143: "meter state changed", 144: "relay disconnected",
    145: "relay connected", 146: "relay position differs from meter state",
    147: "health check passed", 148: "critical health check failed",
    149: "important health check failed", 150: "load limit exceeded",
    151: "metrology front-end restarted", 152: "meter state recovered",
    153: "alarms acknowledged", 154: "alarm dropped: outbox full", 155: "firmware reverted",
    156: "HAN device joined", 157: "HAN device enrollment failed", 158: "HAN device removed",
    159: "HAN enrollment outcome",
}


def add(named, codes):
    """`named` ({code: name}, the platform's names) with ours for those of `codes` we have."""
    for c in codes:
        if c in NAMES:
            named[c] = NAMES[c]
    return named
