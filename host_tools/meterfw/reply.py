"""What the host reads from each of the meter's replies, checked in one place as they arrive.

A reply is JSON from a device we do not control: it may be no JSON at all, nested deeper than the
parser's stack, an array where an object belongs, or an object without a field or with a field of
another type. Each becomes a ReplyError naming the reply and the field, so no command divides by
a string or indexes a number further on. A shape lists only what the host reads (the meter may
say more): `{"name": kind}` is a required field, `{"name?": kind}` one that may be absent,
`[kind]` a list of them, Opt(kind) a value that may also be null.
"""
from __future__ import annotations

import json
import math
import re

from . import protocol as P
from .errors import ReplyError


class Kind:
    def __init__(self, test, desc: str):
        self.test, self.desc = test, desc


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _hex(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"(?:[0-9a-fA-F]{2})+", v) is not None


ANY = Kind(lambda v: True, "anything")
STR = Kind(lambda v: isinstance(v, str), "a string")
BOOL = Kind(lambda v: isinstance(v, bool), "true or false")
INT = Kind(_int, "an integer")
COUNT = Kind(lambda v: _int(v) and v >= 0, "an integer from 0")
POSITIVE = Kind(lambda v: _int(v) and v > 0, "an integer above 0")
NUM = Kind(lambda v: (_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number")
HEX = Kind(_hex, "hex digits")
OBJ = Kind(lambda v: isinstance(v, dict), "an object")


class Opt:
    """The value may also be null."""

    def __init__(self, spec):
        self.spec = spec


class Each:
    """An object whose every value has one shape (a map)."""

    def __init__(self, spec):
        self.spec = spec


class When:
    """More fields, required only when pred(object) holds (e.g. a transfer under way)."""

    def __init__(self, pred, spec: dict):
        self.pred, self.spec = pred, spec


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _desc(spec) -> str:
    if isinstance(spec, Kind):
        return spec.desc
    if isinstance(spec, Opt):
        return f"{_desc(spec.spec)} or null"
    if isinstance(spec, list):
        return "a list"
    return "an object"


def check(what: str, value, spec, path: str = "") -> None:
    """Raise ReplyError unless value has the shape spec (see the module's docstring)."""
    def bad(expected: str):
        where = f" field {path}" if path else ""
        raise ReplyError(f"meter sent a {what}{where} of {_show(value)}, expected {expected}")

    if isinstance(spec, Opt):
        if value is not None:
            check(what, value, spec.spec, path)
    elif isinstance(spec, Kind):
        if not spec.test(value):
            bad(spec.desc)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            bad("a list")
        for i, item in enumerate(value):
            check(what, item, spec[0], f"{path}[{i}]")
    elif isinstance(spec, Each):
        if not isinstance(value, dict):
            bad("an object")
        for k, item in value.items():
            check(what, item, spec.spec, f"{path}.{k}" if path else k)
    elif isinstance(spec, tuple):  # all of them: an object's fields, then the conditional ones
        for part in spec:
            check(what, value, part, path)
    elif isinstance(spec, When):
        if isinstance(value, dict) and spec.pred(value):
            check(what, value, spec.spec, path)
    else:  # a dict: the fields an object must (or, with "?", may) carry
        if not isinstance(value, dict):
            bad("an object")
        for key, sub in spec.items():
            name = key.rstrip("?")
            inner = f"{path}.{name}" if path else name
            if name not in value:
                if key.endswith("?"):
                    continue
                raise ReplyError(f"meter sent a {what} without the field {inner}")
            check(what, value[name], sub, inner)


def parse(what: str, payload: bytes, spec=OBJ):
    """JSON bytes from the meter, checked against spec."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ReplyError(f"meter sent a {what} that is not JSON: {bytes(payload[:40])!r}") from None
    if not isinstance(value, dict) and spec is not ANY:
        raise ReplyError(f"meter sent a {what} that is not a JSON object: {bytes(payload[:40])!r}")
    check(what, value, spec)
    return value


# --- the shapes: what the host reads of each reply ------------------------------------------------

INITIATE = {"block_size": POSITIVE, "first_not_transferred_block": COUNT, "next?": COUNT, "window?": COUNT,
            "signature_ms?": Opt(NUM)}
UPDATE = ({"status": INT, "version?": Opt(STR), "image_id?": Opt(STR), "result?": Opt(STR),
           "reason?": Opt(STR), "base?": Opt(HEX)},
          When(lambda s: s.get("status") == P.INITIATED,
               {"block_size": POSITIVE, "first_not_transferred_block": COUNT, "next_block": COUNT,
                "window": COUNT}))
STATUS = ({"board": STR, "serial?": Opt(STR), "active_slot": STR, "active_version": Opt(STR), "confirmed": ANY,
           "slots": Each({"version": Opt(STR)}), "boot_reason": STR, "mode?": Opt(STR),
           "register_wh?": Opt(NUM), "register_mwh?": Opt(NUM), "uptime_s?": Opt(NUM), "time_s?": Opt(NUM),
           "interval_s?": Opt(NUM), "security_floor?": Opt(INT), "health?": Opt([OBJ]), "update?": UPDATE,
           "active_image_id?": Opt(HEX)},
          When(lambda s: s.get("mode") != "recovery", {"register_wh": NUM, "uptime_s": NUM}))
ALARM = {"seq": INT, "time": NUM, "name": ANY, "message": ANY, "report": ANY}
RELAY = {"latched": Opt(STR), "commanded": ANY, "agrees": ANY}
PAGE = {"fields": [STR], "rows": [[ANY]], "more": BOOL}
INTERVAL_PAGE = {**PAGE, "flag_names": [STR]}
EVENT_PAGE = {**PAGE, "names": OBJ}
INTERVAL = {"seq": INT, "start": INT, "duration_s": INT, "flags": INT, "energy_mwh": INT, "received_mwh": INT,
            "register_mwh": INT}
EVENT = {"seq": INT, "time": NUM, "code": INT, "value": ANY}

SHAPES = {
    P.STATUS: ("status reply", STATUS),
    P.READ_INTERVALS: ("interval page", INTERVAL_PAGE),
    P.READ_EVENTS: ("event page", EVENT_PAGE),
    P.READ_REGISTERS: ("register read", {"delivered_mwh": NUM, "received_mwh": NUM, "net_mwh": NUM,
                                         "lifetime_delivered_mwh": NUM, "lifetime_received_mwh": NUM,
                                         "multiplier": ANY, "resets": ANY, "alarms": [ALARM],
                                         "prepayment": Opt({"balance_wh": ANY, "credit_wh": ANY})}),
    P.READ_STATE: ("meter state", {"version": ANY, "seq": ANY, "hash": STR, "relay": RELAY}),
    P.HEALTH: ("health check", {"ok": BOOL, "items": [{"check": STR, "status": STR, "severity": STR,
                                                      "message": Opt(STR), "value": ANY}]}),
    P.TIME_GET: ("time reply", {"time_ms": INT, "valid": ANY}),
    P.TIME_SET: ("time-set reply", {"old_ms": INT, "new_ms": INT, "delta_ms": INT, "interval_split": ANY}),
    P.RELAY: ("relay reply", RELAY),
    P.READ_ALARMS: ("alarm list", {"alarms": [ALARM]}),
    P.ACK_ALARMS: ("acknowledgement", {"acknowledged": ANY}),
    P.READ_DISPLAY: ("display reply", {"text": Opt(STR)}),
    P.SET_STATE: ("state-set reply", {"seq": ANY, "hash": STR}),
    P.RESET_REGISTERS: ("register reset reply", {"before": {"resets": ANY, "delivered_mwh": ANY,
                                                            "received_mwh": ANY}}),
    P.UNREJECT: ("unreject reply", {"unrejected": ANY}),
    P.AUTH_CHALLENGE: ("challenge", {"nonce": HEX}),
    P.UPD_STATE: ("update state", UPDATE),
    P.UPD_INITIATE: ("initiate reply", INITIATE),
    P.UPD_DELTA: ("delta initiate reply", INITIATE),
    P.UPD_VERIFY: ("verify reply", {"verify_ms?": Opt(NUM)}),
    P.UPD_ACTIVATE: ("activate reply", {"activate_at_s?": Opt(NUM), "boundary_s?": Opt(NUM),
                                        "deferred_s?": Opt(NUM), "meter_time_s?": Opt(NUM)}),
}


def parse_reply(cmd: int, payload: bytes):
    """The reply to command cmd, parsed and checked against what the host reads of it."""
    what, spec = SHAPES.get(cmd, (f"reply to command {cmd:#04x}", OBJ))
    return parse(what, payload, spec)
