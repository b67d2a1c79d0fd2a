# The application's command codes, beside the platform's (bootloader/protocol.py, through
# bootloader/api.py). host_tools/meterfw/protocol.py mirrors both; a test keeps them in step.
from micropython import const

READ_INTERVALS = const(0x02)
UPD_NOTICE = const(0x15)  # upgrade available, before any payload (FR33)
READ_REGISTERS = const(0x40)
READ_STATE = const(0x41)
HEALTH = const(0x42)
TIME_GET = const(0x43)
READ_ALARMS = const(0x44)
READ_DISPLAY = const(0x45)
SET_STATE = const(0x50)
TIME_SET = const(0x51)
RELAY = const(0x52)
ACK_ALARMS = const(0x53)
RESET_REGISTERS = const(0x54)
