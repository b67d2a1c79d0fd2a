"""The link protocol's tables: command codes, the meter's error codes, the update states, and the
alarm codes the host reads by number. They mirror the device's: the platform's
(bootloader/protocol.py) and the application's (firmware/commands.py, firmware/event_codes.py);
tests/test_protocol_tables.py keeps them in step."""
PING = 0x00
STATUS = 0x01
READ_INTERVALS = 0x02
READ_EVENTS = 0x03
UPD_INITIATE = 0x10
UPD_BLOCK = 0x11
UPD_VERIFY = 0x12
UPD_ACTIVATE = 0x13
UPD_STATE = 0x14
UPD_NOTICE = 0x15
UPD_DELTA = 0x16
REVERT = 0x20
UNREJECT = 0x21
RETRY = 0x22
AUTH_CHALLENGE = 0x30
ATTEST = 0x31
READ_REGISTERS = 0x40
READ_STATE = 0x41
HEALTH = 0x42
TIME_GET = 0x43
READ_ALARMS = 0x44
READ_DISPLAY = 0x45
HAN_TABLE = 0x46
SET_STATE = 0x50
TIME_SET = 0x51
RELAY = 0x52
ACK_ALARMS = 0x53
RESET_REGISTERS = 0x54
HAN_JOIN = 0x55
HAN_REMOVE = 0x56

# DLMS class 18 image_transfer_status
TRANSFER_STATUS = (
    "not initiated", "initiated", "verification initiated", "verification successful",
    "verification failed", "activation initiated", "activation successful", "activation failed",
)
INITIATED = 1
VERIFIED = 3

# Alarms the host acts on by their code, under the meter's names for them (firmware/event_codes.py).
ALARM_CODES = {"FIRMWARE_REVERTED": 155, "HAN_ENROLLMENT": 159}
# HAN_ENROLLMENT, a HAN join's outcome: its value indexes these (firmware/han_jobs.py), its
# message is "EUI-64: what happened".
HAN_STAGES = ("joined", "did not join", "comm test failed", "self-test failed", "meter restarted in the window")

# Every error code a meter's ERROR reply may carry.
ERRORS = frozenset({
    "already_active", "auth_failed", "auth_required", "auth_unavailable", "bad_block", "bad_frame",
    "bad_image", "bad_request", "bootloader_too_old", "downgrade", "han_bad_install_code", "han_busy",
    "han_no_radio", "han_not_enrolled", "han_unknown_tech", "incomplete", "internal", "no_memory", "no_previous",
    "no_relay", "no_space", "not_initiated", "not_verified", "on_trial", "platform_too_old", "pricing_event",
    "rejected", "replay", "rollback", "storage", "unknown_command", "verify_failed", "wrong_base", "wrong_board",
})
