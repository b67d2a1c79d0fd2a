# Names of the event codes (eventlog.py). Loaded for a read and forgotten after it
# (eventlog.names): the names stay out of the heap while the meter meters.
NAMES = {
    17: "firmware ready for activation", 18: "firmware activated",
    51: "firmware verification failed", 100: "boot", 101: "trial attempt",
    102: "image confirmed", 103: "reverted", 104: "application crashed",
    105: "download started", 106: "download complete", 107: "boot control rebuilt",
    108: "intervals closed after power-down", 109: "recovery console opened",
    110: "rejected image allowed again by operator", 111: "health check failed",
    112: "revert target dropped: below the security floor",
    130: "upgrade available", 131: "activation deferred for a pricing event",
    4: "clock adjusted (old time)", 5: "clock adjusted (new time)", 6: "clock invalid",
    14: "non-volatile memory error", 16: "measurement system error",
    140: "interval records dropped (quota)", 141: "registers reset (delivered)",
    142: "registers reset (received)", 143: "meter state changed", 144: "relay disconnected",
    145: "relay connected", 146: "relay position differs from meter state",
    147: "health check passed", 148: "critical health check failed",
    149: "important health check failed", 150: "load limit exceeded",
    151: "metrology front-end restarted", 152: "meter state recovered",
    153: "alarms acknowledged", 154: "alarm dropped: outbox full",
}

