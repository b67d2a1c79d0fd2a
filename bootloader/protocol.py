# The platform's command codes and error reply, shared by the application's link server and the
# recovery console: what a meter serves whatever application it runs. The application's own
# commands are firmware/commands.py's; host_tools/meterfw/protocol.py mirrors both (a test keeps
# them in step).
import json
from micropython import const

PING = const(0x00)
STATUS = const(0x01)
READ_EVENTS = const(0x03)
UPD_INITIATE = const(0x10)
UPD_BLOCK = const(0x11)
UPD_VERIFY = const(0x12)
UPD_ACTIVATE = const(0x13)
UPD_STATE = const(0x14)
REVERT = const(0x20)
UNREJECT = const(0x21)
RETRY = const(0x22)
AUTH_CHALLENGE = const(0x30)
ATTEST = const(0x31)  # privileged: an open command's reply, sealed (an authenticated read)

# An update's state (DLMS/COSEM class 18 image_transfer_status), as stored and reported.
NOT_INITIATED = const(0)
INITIATED = const(1)
VERIFYING = const(2)
VERIFIED = const(3)
VERIFY_FAILED = const(4)
ACTIVATING = const(5)
ACTIVATED = const(6)
ACTIVATION_FAILED = const(7)


class CommandError(Exception):
    """CommandError(code, message), raised by a handler: an ERROR frame with the code, and the
    message for people."""


def query(payload):
    """A request's body as the JSON object it must be ({} when empty)."""
    try:
        q = json.loads(payload) if payload else {}
    except Exception:  # not JSON, not UTF-8, or nested past the parser's depth
        raise CommandError("bad_request", "request body is not JSON")
    if not isinstance(q, dict):
        raise CommandError("bad_request", "request body must be a JSON object")
    return q


U32_MAX = const(0xFFFFFFFF)  # the widest integer the meter stores (times, sizes, the floor)
_NEEDED = object()
_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def field(q, key, kind, default=_NEEDED, lo=None, hi=None):
    """q[key], checked before anything uses it: of `kind` (an int is never a bool), within
    lo..hi for an int; `default` when absent (without one, the field is required). Whatever a
    peer sends, a handler meets only what it expects or refuses the request."""
    if key not in q:
        if default is _NEEDED:
            raise CommandError("bad_request", "%s is missing" % key)
        return default
    v = q[key]
    if not isinstance(v, kind) or kind is int and isinstance(v, bool):
        raise CommandError("bad_request", "%s must be %s" % (key, _KINDS[kind]))
    if lo is not None and v < lo or hi is not None and v > hi:
        raise CommandError("bad_request", "%s must be from %s to %s" % (key, lo, hi))
    return v


def choice(q, key, choices, default=_NEEDED):
    """A string field that must be one of `choices`."""
    v = field(q, key, str, default)
    if v not in choices:
        raise CommandError("bad_request", "%s must be one of %s" % (key, ", ".join(choices)))
    return v
