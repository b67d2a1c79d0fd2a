# Command codes and error codes of the link protocol, shared by the application's link
# server and the recovery console. host_tools/meterfw/protocol.py mirrors them.
import json
from micropython import const

PING = const(0x00)
STATUS = const(0x01)
READ_INTERVALS = const(0x02)
READ_EVENTS = const(0x03)
UPD_INITIATE = const(0x10)
UPD_BLOCK = const(0x11)
UPD_VERIFY = const(0x12)
UPD_ACTIVATE = const(0x13)
UPD_STATE = const(0x14)
UPD_NOTICE = const(0x15)  # upgrade available, before any payload (FR33)
REVERT = const(0x20)
UNREJECT = const(0x21)
RETRY = const(0x22)
AUTH_CHALLENGE = const(0x30)
# The meter runtime (firmware/cmd_*.py): reads, then privileged changes.
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


class CommandError(Exception):
    """Raised by a handler; becomes an ERROR frame with a code and a message for people."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def query(payload):
    """A request's body as the JSON object it must be ({} when empty)."""
    q = json.loads(payload) if payload else {}
    if not isinstance(q, dict):
        raise CommandError("bad_request", "request body must be a JSON object")
    return q
