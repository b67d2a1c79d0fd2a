# Names of the platform's event codes (eventlog.py). Loaded for a read and forgotten after it
# (eventlog.names): the names stay out of the heap while the meter meters.
NAMES = {
    17: "firmware ready for activation", 18: "firmware activated",
    51: "firmware verification failed", 100: "boot", 101: "trial attempt",
    102: "image confirmed", 103: "reverted", 104: "application crashed",
    105: "download started", 106: "download complete", 107: "boot control rebuilt",
    109: "recovery console opened", 110: "rejected image allowed again by operator",
    112: "revert target dropped: below the security floor",
    113: "bootloader on trial", 114: "bootloader confirmed", 115: "bootloader fell back",
}
