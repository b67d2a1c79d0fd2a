"""Whatever a peer sends, the link server answers with an error and keeps serving, and the meter
changes nothing: bodies of the wrong JSON type, fields of the wrong type or size, garbage that is
not JSON, and an image head whose manifest has the wrong shape. Sent over the real link to a
running meter, open commands as they are and privileged ones inside an authenticated session.

Before the fix, `int(q["at_s"])` on 1e400 (OverflowError), a manifest missing a key (KeyError in
the admission, outside the handler's try) and others ended the link server: the meter stopped
answering, and on an image in trial it would have reverted a good image."""
import json

from meterfw import protocol as P
from meterfw.errors import CommandError
from meterfw.image import assemble, canonical_json, parse_image

# Bodies that are not a JSON object at all.
NOT_OBJECTS = [b"null", b"42", b'"text"', b"[]", b"[1, 2]", b"true", b"{\"a\":", b"\xff\xfe\x00", b"1e400",
               b"[" * 600 + b"]" * 600, b'{"a": ' * 300 + b"1" + b"}" * 300]
# Values of the wrong type or size for any field.
BAD_VALUES = [None, "", "x" * 1500, -1, 2**64, 10**400, 1.5, 1e308, [], [1, "a"], {}, {"a": {"b": []}}, True]

OPEN_FIELDS = {
    P.READ_INTERVALS: ("limit", "since_seq", "since_s"),
    P.READ_EVENTS: ("limit", "since_seq"),
    P.HEALTH: ("host_time_ms",),
}
# Privileged commands that read a JSON body, and its fields. (Those that ignore their body, such
# as reset_registers or revert, are left out: any body is a valid request for them.)
PRIVILEGED_FIELDS = {
    P.UPD_ACTIVATE: ("when", "registers", "ack", "at_s"),
    P.UPD_NOTICE: ("version", "image_id", "size", "when"),
    P.TIME_SET: ("time_ms",),
    P.RELAY: ("action",),
    P.ACK_ALARMS: ("seqs",),
    P.SET_STATE: ("multiplier", "nem", "pricing_events", "grid_events", "reporting", "health_severity",
                  "prepayment", "unknown"),
}


def _bodies(fields):
    for body in NOT_OBJECTS:
        yield body
    for name in fields:
        for value in BAD_VALUES:
            yield json.dumps({name: value}, separators=(",", ":")).encode()
    if "at_s" in fields:
        for value in BAD_VALUES:
            yield json.dumps({"when": "at", "at_s": value}).encode()


def _refused(call, body):
    try:
        reply = call(body)
    except CommandError as e:
        assert e.code != "internal", (body[:80], e)
        return e.code
    return reply


def test_no_body_or_field_ends_the_link_or_changes_the_meter(board):
    meter = board.meter()
    before = meter.status()
    for cmd, fields in OPEN_FIELDS.items():
        for body in _bodies(fields):
            _refused(lambda b: meter.link.request(cmd, b), body)
            assert meter.link.request(P.PING, b"still here") == b"still here", (cmd, body[:80])
    for cmd, fields in PRIVILEGED_FIELDS.items():
        for body in _bodies(fields):
            _refused(lambda b: meter.privileged(cmd, b), body)
            assert meter.link.request(P.PING, b"still here") == b"still here", (cmd, body[:80])
    after = meter.status()
    meter.link.close()
    assert after["link_faults"] == 0
    assert after["uptime_s"] >= before["uptime_s"]  # the same boot: nothing crashed
    assert after["boot_reason"] == before["boot_reason"]
    for key in ("state_hash", "active_version", "confirmed", "rejected", "security_floor", "slots"):
        assert after[key] == before[key], key
    assert after["register_mwh"] >= before["register_mwh"]  # no reset: the register only grows
    assert after["update"]["status"] == before["update"]["status"]


def test_an_image_head_whose_manifest_has_the_wrong_shape_is_refused(board, images):
    meter = board.meter()
    img = parse_image(images["v2"].read_bytes())
    good = img.manifest
    shapes = [b"[]", b"null", b"{}", b"not json", canonical_json({**good, "version": 7}),
              canonical_json({**good, "security_version": -1}), canonical_json({**good, "security_version": 2**40}),
              canonical_json({**good, "payload_size": "big"}), canonical_json({**good, "board": ["sim"]}),
              canonical_json({**good, "min_bootloader": "1.x.0"}), canonical_json({**good, "entry": "../app"}),
              canonical_json({**good, "payload_sha256": "00"}),
              canonical_json({k: v for k, v in good.items() if k != "payload_size"})]
    for raw in shapes:
        data = assemble(raw, img.signatures, img.payload)
        head = data[:len(data) - len(img.payload)]
        try:
            meter.privileged(P.UPD_INITIATE, head)
            raise AssertionError(f"a manifest {raw[:60]!r} was admitted")
        except CommandError as e:
            assert e.code in ("bad_image", "bad_request", "verify_failed"), (raw[:60], e)
        assert meter.link.request(P.PING, b"x") == b"x"
    st = meter.status()
    meter.link.close()
    assert st["link_faults"] == 0 and st["update"]["status"] == 0


def test_a_reused_sequence_number_with_another_body_is_not_answered_from_the_cache(board):
    meter = board.meter()
    link = meter.link
    link._seq -= 1  # the next request reuses the last one's sequence number
    assert link.request(P.PING, b"one") == b"one"
    link._seq -= 1
    assert link.request(P.PING, b"two") == b"two"  # a new request, not a retry of "one"
    link.close()
