"""The host never prints a traceback (#11 class 8): every malformed file, key directory, argument
or meter reply gives one line `meterfw: ...` and a documented exit code, never the catch-all's
`internal error`.

The meter here is a test double: a peer thread on the far end of a real pseudo-terminal that
speaks the real framing (meterfw.framing) and answers with crafted payloads. The host, which is
under test, opens the pty's path with pyserial exactly as it opens /dev/ttyACM0.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import traceback
import tty
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from meterfw import framing
from meterfw import protocol as P
from meterfw.auth import TAG, TRAILER, meter_key
from meterfw.cli import main
from meterfw.image import assemble, canonical_json, pack_payload, sign_manifest
from meterfw.keys import init_keys, load_keys

# The documented exit codes (README, `meterfw --help`).
OK, ERROR, UNHEALTHY, REVERTED, REJECTED, FAILED, SERIAL_MISMATCH, USAGE, INTERNAL = 0, 1, 2, 3, 4, 5, 6, 64, 70
MFW = str(Path(sys.executable).parent / "meterfw")


def run(argv, expect=None):
    """cli.main in-process: (exit code, stdout, stderr). An exception that escapes main() is
    reported as exit code "raised" with its traceback in stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
        except BaseException:  # noqa: B036 -- the point of the test: nothing may escape
            rc = "raised"
            traceback.print_exc()
    return rc, out.getvalue(), err.getvalue()


def assert_one_line(rc, err, expect=None, contains=None):
    """Exit code expect (any documented failure when None), and stderr one `meterfw: ` line."""
    assert "Traceback" not in err, err
    assert rc != INTERNAL and rc != "raised", err
    if expect is not None:
        assert rc == expect, (rc, err)
    else:
        assert rc in (ERROR, UNHEALTHY, REVERTED, REJECTED, FAILED, SERIAL_MISMATCH, USAGE), (rc, err)
    assert err.startswith("meterfw: ") and err.count("\n") == 1, repr(err)
    if contains is not None:
        assert contains in err, err


# --- a fake meter on a real pseudo-terminal ------------------------------------------------------

SERIAL = "MF0000TEST"
BLOCK_SIZE = 256


def _update(status=0, **kw):
    return {"status": status, "version": None, "image_id": None, "result": None, "reason": None, **kw}


def valid_replies() -> dict:
    """What a healthy meter answers, command by command (the shapes of firmware/ and bootloader/)."""
    alarm = {"seq": 3, "time": 1700000000, "code": 70, "name": "clock invalid", "value": 0,
             "message": "the clock was set", "report": "immediate"}
    return {
        P.STATUS: {
            "board": "sim", "serial": SERIAL, "active_slot": "a", "active_version": "1.0.0", "confirmed": True,
            "trial": False, "slots": {"a": {"version": "1.0.0"}, "b": {"version": None}}, "register_wh": 12.5,
            "register_mwh": 12500, "register_received_mwh": 0, "state_hash": "ab" * 32, "alarms_pending": 0,
            "uptime_s": 40, "boot_reason": "power-on", "time_s": 1700000000, "interval_s": 3,
            "bootloader_version": "0.1.0", "security_floor": 0, "can_revert": False, "rejected": [],
            "health": [{"check": "clock", "severity": "important", "ok": True, "message": None}],
            "update": _update(6, result="confirmed"), "metering": {"closes": 3, "late_ms": 0}, "link_faults": 0,
            "heap": {"free": 1000, "used": 2000, "peak_used": 2500, "peak_live": 2200, "board_models": 0},
        },
        P.READ_INTERVALS: {
            "fields": ["seq", "start", "duration_s", "flags", "energy_mwh", "received_mwh", "register_mwh",
                       "register_received_mwh"],
            "flag_names": ["power-down", "clock-set", "firmware-change", "partial", "estimated"],
            "more": False, "first_seq": 1,
            "rows": [[1, 1700000000, 3, 0, 100, 0, 12400, 0], [2, 1700000003, 3, 8, 100, 0, 12500, 0]],
        },
        P.READ_EVENTS: {"fields": ["seq", "time", "code", "value"], "rows": [[1, 1700000000, 1, 0]],
                        "names": {"1": "power on"}, "more": False},
        P.READ_REGISTERS: {
            "time_s": 1700000000, "delivered_mwh": 12500, "received_mwh": 0, "net_mwh": 12500,
            "lifetime_delivered_mwh": 12500, "lifetime_received_mwh": 0, "resets": 0, "multiplier": 1,
            "prepayment": {"credit_wh": 100, "used_wh": 12, "balance_wh": 88}, "last_interval_seq": 2,
            "alarms": [alarm],
        },
        P.READ_STATE: {"version": 1, "seq": 0, "hash": "cd" * 32, "multiplier": 1,
                       "relay": {"connected": True, "fitted": True, "latched": "connected",
                                 "commanded": "connected", "agrees": True}},
        P.HEALTH: {"items": [{"check": "clock", "severity": "important", "status": "pass", "ok": True,
                              "message": None, "value": 12}], "ok": True},
        P.TIME_GET: {"time_ms": 1700000000000, "valid": True},
        P.READ_ALARMS: {"alarms": [alarm], "pushes": 0},
        P.READ_DISPLAY: {"text": "hello"},
        P.AUTH_CHALLENGE: {"nonce": "00" * 16},
        P.TIME_SET: {"old_ms": 1700000000000, "new_ms": 1700000001000, "delta_ms": 1000, "interval_split": False},
        P.RELAY: {"fitted": True, "latched": "connected", "commanded": "connected", "agrees": True, "moved": True},
        P.ACK_ALARMS: {"acknowledged": 1, "pending": 0},
        P.SET_STATE: {"hash": "ef" * 32, "seq": 1},
        P.RESET_REGISTERS: {"before": {"resets": 0, "delivered_mwh": 12500, "received_mwh": 0}},
        P.UNREJECT: {"unrejected": True},
        P.UPD_NOTICE: {"noted": True, "update": _update()},
        P.UPD_STATE: _update(),
        P.UPD_INITIATE: {"block_size": BLOCK_SIZE, "first_not_transferred_block": 0, "blocks": 4, "next": 0,
                         "window": 2, "signature_ms": 120},
        P.UPD_VERIFY: {"status": 3, "version": "1.1.0", "verify_ms": 30},
        P.UPD_ACTIVATE: {"when": "now", "activate_at_s": 1700000000, "deferred_s": 0, "boundary_s": None,
                         "meter_time_s": 1700000000, "registers": "preserve", "ack": "immediate"},
    }


# Privileged commands, whose replies the meter seals (bootloader/link.py); UPD_BLOCK's is not.
SEALED = {P.UPD_INITIATE, P.UPD_VERIFY, P.UPD_ACTIVATE, P.UPD_NOTICE, P.REVERT, P.UNREJECT, P.RETRY, P.SET_STATE,
          P.TIME_SET, P.RELAY, P.ACK_ALARMS, P.RESET_REGISTERS, P.ATTEST}


class FakeMeter:
    """The far end of a pseudo-terminal, answering each request frame from `replies`
    ({command: JSON-able object, or raw bytes}), sealed as a meter with `secret` seals them;
    UPD_BLOCK gets the binary grant, ATTEST the reply of the command it names. With `vanish_on`,
    it closes its end when that command arrives (a port that goes away)."""

    def __init__(self, replies: dict | None = None, vanish_on: int | None = None, secret: bytes = b""):
        self.replies = valid_replies() if replies is None else replies
        self.vanish_on = vanish_on
        self._key = meter_key(secret, SERIAL)
        self._nonce = b""
        self.seen: list[int] = []
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, f: framing.Frame) -> bytes:
        if f.type == P.UPD_BLOCK:
            (n,) = struct.unpack_from("<I", f.payload)  # a window of one block at a time; never `done`
            return framing.encode(f.type | framing.OK_BIT, f.seq, struct.pack("<IHB", n + 1, 1, 0))
        if f.type == P.PING:
            return framing.encode(f.type | framing.OK_BIT, f.seq, f.payload)
        which = f.payload[0] if f.type == P.ATTEST else f.type
        if which not in self.replies:
            body = json.dumps({"code": "unknown_command", "message": f"no command {f.type}"}).encode()
            return framing.encode(framing.ERROR, f.seq, body)
        r = self.replies[which]
        body = r if isinstance(r, bytes) else json.dumps(r).encode()
        if f.type == P.AUTH_CHALLENGE:
            try:
                self._nonce = bytes.fromhex(r["nonce"])
            except (TypeError, ValueError, KeyError):
                self._nonce = b""
        if f.type in SEALED:
            counter = f.payload[-TRAILER:-TAG]
            body += hmac.new(self._key, self._nonce + bytes([f.type | framing.OK_BIT, f.type]) + counter + body,
                             hashlib.sha256).digest()[:TAG]
        return framing.encode(f.type | framing.OK_BIT, f.seq, body)

    def _serve(self):
        dec = framing.Decoder(max_payload=1 << 20)
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            for f in dec.feed(data):
                self.seen.append(f.type)
                if f.type == self.vanish_on:
                    self._vanish()
                    return
                os.write(self._master, self._answer(f))

    def _vanish(self):
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._vanish()


@pytest.fixture
def fake(keydir):
    made = []
    secret = load_keys(keydir, private=False).utility_secret

    def make(**kw) -> FakeMeter:
        made.append(FakeMeter(secret=secret, **kw))
        return made[-1]

    yield make
    for m in made:
        m.close()


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys") / "keys"
    init_keys(d)
    return d


def make_image(keys: Path, manifest_bytes: bytes | None = None, version: str = "1.1.0") -> bytes:
    """A signed image without a compile: one small module in the payload."""
    payload = pack_payload({"app.mpy": b"M\x06" + b"x" * 700})
    if manifest_bytes is None:
        manifest_bytes = canonical_json({
            "format": 1, "board": "sim", "version": version, "security_version": 0, "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(), "min_bootloader": "0.1.0", "entry": "app",
            "build_time": 1700000000, "mpy": "6.3", "kind": "firmware", "api": 1})
    return assemble(manifest_bytes, sign_manifest(manifest_bytes, load_keys(keys)), payload)


@pytest.fixture(scope="module")
def image(keydir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "v2.mfw"
    path.write_bytes(make_image(keydir))
    return path


# --- the double and the host agree on the good path ------------------------------------------------

READS = {  # a command line, and the reply it reads first
    P.STATUS: ["status"],
    P.READ_INTERVALS: ["read", "intervals"],
    P.READ_EVENTS: ["log"],
    P.READ_REGISTERS: ["read", "registers"],
    P.READ_STATE: ["read", "state"],
    P.HEALTH: ["health"],
    P.TIME_GET: ["time", "get"],
    P.READ_ALARMS: ["alarms"],
    P.READ_DISPLAY: ["display"],
}
PRIVILEGED = {  # commands whose own reply comes after the authentication
    P.AUTH_CHALLENGE: ["relay", "connect"],
    P.RELAY: ["relay", "connect"],
    P.TIME_SET: ["time", "set", "--to", "1700000001"],
    P.SET_STATE: ["state", "set", "multiplier=2"],
    P.RESET_REGISTERS: ["registers", "reset"],
    P.ACK_ALARMS: ["alarms", "--ack"],
}
UPGRADE = [P.UPD_NOTICE, P.UPD_STATE, P.UPD_INITIATE, P.UPD_VERIFY, P.UPD_ACTIVATE]


def cmdline(fake_meter, cmd, keydir, image):
    base = ["--port", fake_meter.port, "--timeout", "0.3", "--keys", keydir]
    if cmd in READS:
        return base + READS[cmd]
    if cmd in PRIVILEGED:
        return base + PRIVILEGED[cmd]
    return base + ["upgrade", image, "--when", "now"]


@pytest.mark.parametrize("cmd", list(READS) + list(PRIVILEGED) + [P.UPD_STATE], ids=lambda c: f"cmd{c:#04x}")
def test_good_replies_are_read_without_complaint(cmd, fake, keydir, image):
    m = fake()
    rc, out, err = run(cmdline(m, cmd, keydir, image))
    assert rc == OK and err == "", (rc, err)
    assert cmd in m.seen


# --- replies that are not what the host reads ------------------------------------------------------

NOT_OBJECTS = {
    "null": b"null", "number": b"42", "string": b'"text"', "list": b"[1, 2]", "true": b"true",
    "truncated": b'{"board": "sim", "ser', "not_utf8": b"\xff\xfe{}", "empty": b"",
    "nested_lists": b"[" * 1200 + b"]" * 1200,
    "nested_objects": b'{"a":' * 400 + b"[" * 700 + b"]" * 700 + b"}" * 400,
    "infinity": b"Infinity",
}


@pytest.mark.parametrize("body", sorted(NOT_OBJECTS))
@pytest.mark.parametrize("cmd", list(READS) + list(PRIVILEGED) + UPGRADE, ids=lambda c: f"cmd{c:#04x}")
def test_a_reply_that_is_not_an_object_is_one_line(cmd, body, fake, keydir, image):
    replies = valid_replies()
    replies[cmd] = NOT_OBJECTS[body]
    m = fake(replies=replies)
    rc, out, err = run(cmdline(m, cmd, keydir, image))
    assert_one_line(rc, err, contains="meter")


def _paths(value, path=()):
    """Every field path into a reply: object keys, and the first item of each list."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(value, list) and value:
        yield path + (0,)
        yield from _paths(value[0], path + (0,))


_MISSING = object()
WRONG = {"missing": _MISSING, "null": None, "string": "x", "negative": -1, "huge": 10 ** 30, "float": 1e300,
         "infinity": float("inf"), "list": [], "object": {}, "true": True, "nested": [[[[{"a": [[]]}]]]]}


def _mutated(reply, path, value):
    r = copy.deepcopy(reply)
    node = r
    for p in path[:-1]:
        node = node[p]
    if value is _MISSING:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return r


@pytest.mark.parametrize("cmd", list(READS) + list(PRIVILEGED) + UPGRADE, ids=lambda c: f"cmd{c:#04x}")
def test_no_field_of_any_type_reaches_the_catch_all(cmd, fake, keydir, image):
    """Each field of a good reply, in turn, left out or given a value of another type."""
    failures = []
    m = fake()
    for path in _paths(valid_replies()[cmd]):
        for name, value in WRONG.items():
            m.replies = valid_replies()
            m.replies[cmd] = _mutated(m.replies[cmd], path, value)
            rc, out, err = run(cmdline(m, cmd, keydir, image))
            one_line = err == "" if rc == OK else err.startswith("meterfw: ") and err.count("\n") == 1
            if rc in (INTERNAL, "raised") or "Traceback" in err or not one_line:
                failures.append(f"{'.'.join(map(str, path))} {name}: rc {rc}: {err.strip().splitlines()[-1:]}")
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:40])


def test_an_error_reply_of_any_shape_is_one_line(fake, keydir, image):
    for body in list(NOT_OBJECTS.values()) + [b'{"code": ["x"], "message": "a"}', b'{"message": "two\\nlines"}',
                                              b'{"code": {}, "message": {}}']:
        m = fake()

        def answer(f, body=body):
            return framing.encode(framing.ERROR, f.seq, body)

        m._answer = answer
        rc, out, err = run(["--port", m.port, "--timeout", "0.3", "status"])
        assert_one_line(rc, err, expect=ERROR)


def test_a_reply_of_a_field_the_host_computes_with_is_checked(fake, keydir, image):
    """A block size of 0 would divide by zero; a block count that is not a number, compare."""
    replies = valid_replies()
    replies[P.UPD_INITIATE]["block_size"] = 0
    m = fake(replies=replies)
    rc, out, err = run(cmdline(m, P.UPD_INITIATE, keydir, image))
    assert_one_line(rc, err, expect=ERROR, contains="block_size")


# --- the port goes away mid-transfer ---------------------------------------------------------------

@pytest.mark.parametrize("when", [P.UPD_BLOCK, P.UPD_INITIATE, P.READ_EVENTS, P.STATUS])
def test_port_that_vanishes_mid_upgrade_is_one_line(when, fake, keydir, image):
    m = fake(vanish_on=when)
    rc, out, err = run(cmdline(m, P.UPD_STATE, keydir, image))
    assert_one_line(rc, err, expect=ERROR)


# --- pinning the meter's serial --------------------------------------------------------------------

@pytest.mark.parametrize("args", [["status"], ["read", "intervals"], ["relay", "connect"],
                                  ["upgrade", "IMAGE", "--when", "now"], ["revert"]])
def test_a_meter_with_another_serial_is_refused_before_anything_else(args, fake, keydir, image):
    m = fake()
    args = [image if a == "IMAGE" else a for a in args]
    rc, out, err = run(["--port", m.port, "--timeout", "0.3", "--keys", keydir, "--serial", "MF9999", *args])
    assert_one_line(rc, err, expect=SERIAL_MISMATCH, contains=f"{SERIAL}, not MF9999")
    assert m.seen == [P.STATUS] and out == ""


@pytest.mark.parametrize("reported", [None, 42, ""])
def test_a_meter_without_a_readable_serial_is_refused_when_one_is_pinned(reported, fake, keydir):
    replies = valid_replies()
    replies[P.STATUS]["serial"] = reported
    m = fake(replies=replies)
    rc, out, err = run(["--port", m.port, "--timeout", "0.3", "--serial", SERIAL, "status"])
    assert_one_line(rc, err)
    assert m.seen == [P.STATUS]


def test_the_right_serial_goes_through(fake, keydir):
    m = fake()
    rc, out, err = run(["--port", m.port, "--timeout", "0.3", "--keys", keydir, "--serial", SERIAL,
                        "relay", "connect"])
    assert rc == OK and err == "", err
    assert m.seen[0] == P.STATUS and P.RELAY in m.seen


# --- files: images, key directories, settings --------------------------------------------------------

def _manifest_image(keys, manifest_bytes):
    return make_image(keys, manifest_bytes=manifest_bytes)


BAD_IMAGES = {
    "empty": lambda k, good: b"",
    "truncated_header": lambda k, good: good[:5],
    "truncated_half": lambda k, good: good[: len(good) // 2],
    "random_bytes": lambda k, good: os.urandom(3000),
    "manifest_a_list": lambda k, good: _manifest_image(k, b"[1, 2, 3]"),
    "manifest_a_string": lambda k, good: _manifest_image(k, b'"image"'),
    "manifest_missing_fields": lambda k, good: _manifest_image(k, b'{"format": 1}'),
    "manifest_wrong_types": lambda k, good: _manifest_image(k, canonical_json(
        {**json.loads(good[8:8 + struct.unpack_from("<H", good, 4)[0]]), "payload_size": "700"})),
    "manifest_nested_lists": lambda k, good: _manifest_image(k, b"[" * 5000 + b"]" * 5000),
    "manifest_nested_objects": lambda k, good: _manifest_image(k, b'{"a":' * 3000 + b"1" + b"}" * 3000),
    "manifest_not_utf8": lambda k, good: _manifest_image(k, b"{\xff\xfe}"),
    "manifest_infinity": lambda k, good: _manifest_image(k, canonical_json(
        {**json.loads(good[8:8 + struct.unpack_from("<H", good, 4)[0]]), "build_time": float("inf")})),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_files_are_one_line(case, keydir, image, tmp_path):
    bad = tmp_path / "bad.mfw"
    bad.write_bytes(BAD_IMAGES[case](keydir, image.read_bytes()))
    rc, out, err = run(["image", "inspect", bad])
    assert_one_line(rc, err, expect=ERROR)
    rc, out, err = run(["image", "inspect", bad, "--keys", keydir])
    assert_one_line(rc, err, expect=ERROR)
    rc, out, err = run(["upgrade", bad, "--report", tmp_path / "r.json"])  # judged before any contact
    assert_one_line(rc, err, expect=REJECTED, contains="meterfw: rejected: ")
    rc, out, err = run(["--port", "/dev/null-meter", "allow", bad])
    assert_one_line(rc, err, expect=ERROR)


def test_an_image_path_that_is_a_directory_or_missing_is_one_line(tmp_path):
    for path in (tmp_path, tmp_path / "missing.mfw"):
        for argv in (["image", "inspect", path], ["upgrade", path], ["--port", "x", "allow", path]):
            rc, out, err = run(argv)
            assert_one_line(rc, err, expect=ERROR)


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, image):
    bad = tmp_path / "bad.mfw"
    bad.write_bytes(b"garbage")
    rc, out, err = run(["upgrade", bad, "--report", tmp_path / "no" / "such" / "dir" / "r.json"])
    assert_one_line(rc, err, expect=ERROR, contains="cannot write")


def _keydir_variant(case: str, good: Path, tmp: Path) -> Path:
    d = tmp / "keys"
    if case == "missing":
        return d
    if case == "a_file":
        d.write_bytes(b"not a directory")
        return d
    d.mkdir()
    if case == "empty":
        return d
    for f in good.iterdir():
        shutil.copy(f, d / f.name)
    if case == "garbage_private_key":
        (d / "vendor.key").write_bytes(os.urandom(200))
    elif case == "garbage_pem":
        (d / "vendor.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif case == "rsa_shaped_text":
        (d / "utility.key").write_text("-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 64 + "\n-----END RSA PRIVATE KEY-----\n")
    elif case == "short_public_key":
        (d / "vendor.pub").write_bytes(b"\x01" * 5)
    elif case == "mismatched_public_key":
        (d / "vendor.pub").write_bytes(b"\x01" * 32)
    elif case == "short_secret":
        (d / "utility.secret").write_bytes(b"\x00" * 3)
    elif case == "key_is_a_directory":
        (d / "vendor.key").unlink()
        (d / "vendor.key").mkdir()
    elif case == "secret_is_a_directory":
        (d / "utility.secret").unlink()
        (d / "utility.secret").mkdir()
    elif case == "dangling_symlink":
        (d / "vendor.pub").unlink()
        (d / "vendor.pub").symlink_to(tmp / "nowhere")
    return d


KEYDIR_CASES = ["missing", "a_file", "empty", "garbage_private_key", "garbage_pem", "rsa_shaped_text",
                "short_public_key", "mismatched_public_key", "short_secret", "key_is_a_directory",
                "secret_is_a_directory", "dangling_symlink"]


@pytest.mark.parametrize("case", KEYDIR_CASES)
def test_bad_key_directories_are_one_line(case, keydir, image, tmp_path, fake):
    d = _keydir_variant(case, keydir, tmp_path)
    m = fake()
    cases = [
        ["image", "inspect", image, "--keys", d],
        ["image", "build", "--board", "sim", "--version", "1.2.0", "--keys", d, "-o", tmp_path / "o.mfw"],
        ["--port", m.port, "--timeout", "0.3", "--keys", d, "relay", "connect"],
        ["--port", m.port, "--timeout", "0.3", "--keys", d, "upgrade", image, "--when", "now"],
    ]
    for argv in cases:
        rc, out, err = run(argv)
        if rc == OK:  # a key directory that holds what this command needs
            assert err == "", err
            continue
        assert_one_line(rc, err, expect=ERROR)
    # Those the signing does not read: the secret, and a public key it derives from the private one.
    assert not (tmp_path / "o.mfw").exists() or case in ("short_secret", "secret_is_a_directory", "dangling_symlink")


def test_keys_init_into_a_file_or_over_keys_is_one_line(keydir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for d in (keydir, f, f / "sub"):
        rc, out, err = run(["keys", "init", "--dir", d])
        assert_one_line(rc, err, expect=ERROR)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root")
@pytest.mark.parametrize("case", ["unreadable_dir", "unreadable_key", "unreadable_secret", "unreadable_image",
                                  "unwritable_keys_dir"])
def test_files_without_permission_are_one_line(case, keydir, image, tmp_path_factory):
    """Run as an unprivileged user (root reads anything), on files it may not read."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="meterfw-perm-"))
    try:
        os.chmod(base, 0o755)
        d = base / "keys"
        shutil.copytree(keydir, d)
        img = base / "v2.mfw"
        shutil.copy(image, img)
        for p in [d, img, *d.iterdir()]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        argv = ["image", "inspect", img, "--keys", d]
        if case == "unreadable_dir":
            os.chmod(d, 0o000)
        elif case == "unreadable_key":
            os.chmod(d / "vendor.key", 0o000)
            argv = ["image", "build", "--board", "sim", "--version", "1.2.0", "--keys", d, "-o", base / "o.mfw"]
        elif case == "unreadable_secret":
            os.chmod(d / "utility.secret", 0o000)
            argv = ["--port", "/dev/null", "--keys", d, "status"]
        elif case == "unreadable_image":
            os.chmod(img, 0o000)
        elif case == "unwritable_keys_dir":
            os.chmod(base, 0o555)
            argv = ["keys", "init", "--dir", base / "new"]
        drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.geteuid() == 0 else []
        proc = subprocess.run(drop + [MFW, *map(str, argv)], capture_output=True, text=True, timeout=60)
        assert_one_line(proc.returncode, proc.stderr, expect=ERROR)
    finally:
        for p in [base, *base.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o700)
        shutil.rmtree(base)


STATE_FILES = {
    "missing": None, "not_json": b"multiplier: 2", "a_list": b"[1, 2]", "a_number": b"3", "not_utf8": b"\xff{}",
    "nested": b"[" * 5000 + b"]" * 5000, "nested_object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
}


@pytest.mark.parametrize("case", sorted(STATE_FILES))
def test_bad_state_files_are_one_line(case, tmp_path, fake, keydir):
    f = tmp_path / "state.json"
    if STATE_FILES[case] is not None:
        f.write_bytes(STATE_FILES[case])
    m = fake()
    rc, out, err = run(["--port", m.port, "--timeout", "0.3", "--keys", keydir, "state", "set", "--file", f])
    assert_one_line(rc, err, expect=ERROR)
    assert P.SET_STATE not in m.seen


# --- arguments --------------------------------------------------------------------------------------

BAD_ARGS = {
    "no_command": ([], USAGE),
    "unknown_command": (["frobnicate"], USAGE),
    "unknown_option": (["status", "--frob"], USAGE),
    "missing_argument": (["upgrade"], USAGE),
    "bad_choice": (["relay", "explode"], USAGE),
    "baud_not_a_number": (["--baud", "fast", "status"], USAGE),
    "baud_zero": (["--port", "PORT", "--baud", "0", "status"], USAGE),
    "baud_negative": (["--port", "PORT", "--baud", "-9600", "status"], USAGE),
    "baud_huge": (["--port", "PORT", "--baud", str(10 ** 20), "status"], ERROR),  # pyserial refuses it
    "timeout_nan": (["--port", "PORT", "--timeout", "nan", "status"], USAGE),
    "timeout_negative": (["--port", "PORT", "--timeout", "-1", "status"], USAGE),
    "listen_nan": (["--port", "PORT", "alarms", "--listen", "nan"], USAGE),
    "listen_inf": (["--port", "PORT", "alarms", "--listen", "inf"], USAGE),
    "no_port": (["status"], ERROR),
    "port_missing": (["--port", "/dev/no-such-meter", "status"], ERROR),
    "port_bad_url": (["--port", "socket://", "status"], ERROR),
    "port_bad_scheme": (["--port", "nosuch://x", "status"], ERROR),
    "port_a_directory": (["--port", "/tmp", "status"], ERROR),
    "port_regular_file": (["--port", "/etc/hostname", "status"], ERROR),
    "when_bad": (["--port", "PORT", "upgrade", "IMAGE", "--when", "tomorrow"], ERROR),
    "when_at_bad_time": (["--port", "PORT", "upgrade", "IMAGE", "--when", "at", "noon"], ERROR),
    "when_at_unicode_digits": (["--port", "PORT", "upgrade", "IMAGE", "--when", "at", "\u00b2\u00b3"], ERROR),
    "when_at_year_99999": (["--port", "PORT", "upgrade", "IMAGE", "--when", "at", "9999-12-31T23:59:59-23:59"], None),
    "since_bad": (["--port", "PORT", "read", "intervals", "--since", "yesterday"], ERROR),
    "since_unicode_digits": (["--port", "PORT", "read", "intervals", "--since", "\u00b2\u00b3"], ERROR),
    "time_to_bad": (["--port", "PORT", "time", "set", "--to", "soon"], ERROR),
    "time_to_out_of_range": (["--port", "PORT", "time", "set", "--to", "0001-01-01T00:00:00+23:59"], ERROR),
    "state_set_nothing": (["--port", "PORT", "state", "set"], ERROR),
    "state_set_no_equals": (["--port", "PORT", "state", "set", "multiplier"], ERROR),
    "state_set_nested_value": (["--port", "PORT", "state", "set", "a=" + "[" * 5000 + "]" * 5000], ERROR),
    "state_set_too_big": (["--port", "PORT", "state", "set", "a=" + json.dumps("x" * 5000)], ERROR),
    "uf2_pico2": (["uf2", "--board", "pico2", "--firmware", "IMAGE", "--image", "IMAGE", "--keys", "KEYS",
                   "-o", "OUT"], ERROR),
    "uf2_garbage_firmware": (["uf2", "--board", "pico", "--firmware", "IMAGE", "--image", "IMAGE",
                              "--keys", "KEYS", "-o", "OUT"], ERROR),
    "provision_no_port": (["provision", "--board", "pico", "--image", "IMAGE", "--keys", "KEYS"], ERROR),
    "provision_missing_port": (["provision", "--port", "/dev/no-such-pico", "--board", "pico", "--image", "IMAGE",
                                "--keys", "KEYS"], ERROR),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_are_one_line(case, fake, keydir, image, tmp_path):
    argv, expect = BAD_ARGS[case]
    m = fake()
    subst = {"PORT": m.port, "IMAGE": str(image), "KEYS": str(keydir), "OUT": str(tmp_path / "out")}
    rc, out, err = run([subst.get(a, a) for a in argv])
    assert_one_line(rc, err, expect=expect)


def test_help_lists_the_exit_codes():
    rc, out, err = run(["--help"])
    assert rc == OK
    for code in ("0", "1", "2", "3", "4", "5", "6", "64", "70", "130"):
        assert f"\n  {code:>3} " in out, out


def test_an_unexpected_error_is_one_line_with_its_own_code(monkeypatch):
    """The catch-all: a defect of ours (here a forced one) is reported, not shown as a traceback,
    unless METERFW_DEBUG asks for it."""
    import meterfw.cli as cli

    def broken(args):
        raise ZeroDivisionError("forced")

    monkeypatch.setattr(cli, "cmd_display", broken)
    rc, out, err = run(["--port", "x", "display"])
    assert rc == INTERNAL and err == ("meterfw: internal error: ZeroDivisionError: forced (please report; "
                                      "run with METERFW_DEBUG=1 for the traceback)\n"), err
    monkeypatch.setenv("METERFW_DEBUG", "1")
    rc, out, err = run(["--port", "x", "display"])
    assert rc == INTERNAL and "Traceback" in err and err.endswith("for the traceback)\n")


def test_image_delta_writes_a_delta_the_upgrade_takes_and_bad_inputs_are_one_line(keydir, image, tmp_path):
    old = tmp_path / "old.mfw"
    old.write_bytes(make_image(keydir, version="1.0.0"))
    out = tmp_path / "fix.mfd"
    rc, o, err = run(["image", "delta", "--from", old, "--to", image, "-o", out, "--json"])
    assert rc == OK, err
    info = json.loads(o)
    assert info["bytes"] == out.stat().st_size and info["wire_bytes"] < info["full_wire_bytes"]
    garbage = tmp_path / "garbage.mfw"
    garbage.write_bytes(b"MFD1" + os.urandom(100))
    for argv, contains in (
        (["image", "delta", "--from", old, "--to", old, "-o", tmp_path / "x.mfd"], "same image"),
        (["image", "delta", "--from", out, "--to", image, "-o", tmp_path / "x.mfd"], "is a delta"),
        (["image", "delta", "--from", garbage, "--to", image, "-o", tmp_path / "x.mfd"], "delta"),
        (["image", "delta", "--from", tmp_path / "missing.mfw", "--to", image, "-o", tmp_path / "x.mfd"], None),
        (["image", "delta", "--from", old, "--to", image, "-o", tmp_path / "no" / "dir" / "x.mfd"], "cannot write"),
    ):
        rc, _, err = run(argv)
        assert_one_line(rc, err, expect=ERROR, contains=contains)
    assert not (tmp_path / "x.mfd").exists()
    # A damaged delta is judged before any contact with a meter, like a damaged image.
    for cut in (5, len(out.read_bytes()) // 2):
        bad = tmp_path / "bad.mfd"
        bad.write_bytes(out.read_bytes()[:-cut])
        rc, _, err = run(["upgrade", bad])
        assert_one_line(rc, err, expect=REJECTED, contains="meterfw: rejected: ")
    rc, _, err = run(["upgrade", out, "--delta", "nonsense"])
    assert_one_line(rc, err, expect=USAGE)
