# The application's command codes, beside the platform's (bootloader/protocol.py, through
# bootloader/api.py), and what serves each (table(), read once at boot). host_tools/meterfw/
# protocol.py mirrors the codes; a test keeps them in step.
from micropython import const

READ_INTERVALS = const(0x02)
UPD_NOTICE = const(0x15)  # upgrade available, before any payload (FR33)
UPD_DELTA = const(0x16)  # initiate a delta: the running image's id, then the new image's head
READ_REGISTERS = const(0x40)
READ_STATE = const(0x41)
HEALTH = const(0x42)
TIME_GET = const(0x43)
READ_ALARMS = const(0x44)
READ_DISPLAY = const(0x45)
HAN_TABLE = const(0x46)  # the HAN's device table and each device's last outcome (no keys)
SET_STATE = const(0x50)
TIME_SET = const(0x51)
RELAY = const(0x52)
ACK_ALARMS = const(0x53)
RESET_REGISTERS = const(0x54)
HAN_JOIN = const(0x55)  # enroll a device: its EUI-64 and install code; the meter opens the join window
HAN_REMOVE = const(0x56)  # unenroll a device: its key is erased


def table(m):
    """The link's command table for the application `m`: (open commands, privileged commands).
    A handler is a method, or (m.serve, (module, function)): the function, loaded with its
    module for each request and dropped after (loader.py), so the heap holds none of it while
    the meter meters. Rows are data, not code of this module: it leaves the heap after boot."""
    from bootloader import api as P

    serve = m.serve  # one bound method for every row
    return {
        P.PING: m.ping,
        P.READ_EVENTS: m.read_events,
        P.STATUS: (serve, ("cmd_status", "status")),
        # Read from flash, or from the agent while a download runs: a read loads no agent.
        P.UPD_STATE: (serve, ("cmd_status", "update_state")),
        READ_INTERVALS: (serve, ("interval_reads", "read_page")),
        READ_REGISTERS: (serve, ("cmd_read", "registers")),
        READ_STATE: (serve, ("cmd_read", "state")),
        HEALTH: (serve, ("health", "request")),
        TIME_GET: (serve, ("cmd_read", "time_get")),
        READ_ALARMS: (serve, ("cmd_read", "alarms")),
        READ_DISPLAY: (serve, ("cmd_read", "display")),
        HAN_TABLE: (serve, ("cmd_han", "table")),
    }, {
        # The update agent's: it stays loaded from the first of them until an initiate.
        UPD_NOTICE: (serve, ("update_agent", "notice")),
        P.UPD_INITIATE: m.initiate,
        UPD_DELTA: m.initiate_delta,
        P.UPD_BLOCK: (serve, ("update_agent", "block")),
        P.UPD_VERIFY: (serve, ("update_agent", "verify")),
        P.UPD_ACTIVATE: (serve, ("update_agent", "activate")),
        P.REVERT: (serve, ("cmd_change", "revert")),
        P.UNREJECT: (serve, ("cmd_change", "unreject")),
        SET_STATE: (serve, ("cmd_change", "set_state")),
        TIME_SET: (serve, ("cmd_change", "time_set")),
        RELAY: (serve, ("cmd_change", "relay")),
        ACK_ALARMS: (serve, ("cmd_change", "ack")),
        RESET_REGISTERS: (serve, ("cmd_change", "reset_registers")),
        HAN_JOIN: (serve, ("cmd_han", "join")),
        HAN_REMOVE: (serve, ("cmd_han", "remove")),
    }
