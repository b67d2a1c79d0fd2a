"""Command codes of the link protocol; mirrors bootloader/protocol.py on the device."""
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
SET_STATE = 0x50
TIME_SET = 0x51
RELAY = 0x52
ACK_ALARMS = 0x53
RESET_REGISTERS = 0x54

# DLMS class 18 image_transfer_status
TRANSFER_STATUS = (
    "not initiated", "initiated", "verification initiated", "verification successful",
    "verification failed", "activation initiated", "activation successful", "activation failed",
)
INITIATED = 1
VERIFIED = 3
