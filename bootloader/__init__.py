# The part of the meter that is never upgraded over the air: slot selection, trial boots,
# revert, image verification and the recovery console. The application calls it as its
# stable platform (boot control, image checks, framing, event log).
VERSION = "0.1.0"
