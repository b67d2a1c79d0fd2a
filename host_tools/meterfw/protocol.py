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
REVERT = 0x20
UNREJECT = 0x21
RETRY = 0x22
AUTH_CHALLENGE = 0x30

# DLMS class 18 image_transfer_status
TRANSFER_STATUS = (
    "not initiated", "initiated", "verification initiated", "verification successful",
    "verification failed", "activation initiated", "activation successful", "activation failed",
)
INITIATED = 1
