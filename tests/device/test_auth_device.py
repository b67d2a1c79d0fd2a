"""The device's HMAC-SHA256 and session checks against the host's implementation."""
import hashlib
import hmac

from meterfw.auth import AuthSession


def test_device_hmac_matches_rfc4231_and_the_host(run_mpy):
    out = run_mpy("""
import binascii
from bootloader.auth import Hmac
def h(key, msg):
    return binascii.hexlify(Hmac(key).digest(msg)).decode()
print(json.dumps([h(b"\\x0b" * 20, b"Hi There"), h(b"Jefe", b"what do ya want for nothing?"),
                  h(b"\\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")]))
""")
    assert out[0] == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"  # RFC 4231 case 1
    assert out[1] == hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest()
    assert out[2] == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"  # case 6


def test_device_accepts_host_sealed_requests_once_and_in_order(run_mpy, tmp_path):
    key = bytes(range(32))
    (tmp_path / "meter.key").write_bytes(key)
    out = run_mpy("""
import asyncio, binascii
from bootloader.auth import Sessions
from bootloader.protocol import CommandError
s = Sessions("meter.key")
nonce = asyncio.run(s.challenge(b""))["nonce"]
print(json.dumps({"nonce": nonce}))
""")
    nonce = bytes.fromhex(out["nonce"])
    auth = AuthSession(key, nonce)
    first, second = auth.seal(0x20, b"go"), auth.seal(0x20, b"again")
    forged = bytearray(auth.seal(0x20, b"x"))
    forged[0] ^= 1
    # A second run cannot reuse that nonce (it is random per challenge), so check in one script:
    out = run_mpy("""
import binascii
from bootloader.auth import Sessions
from bootloader.protocol import CommandError
s = Sessions("meter.key")
s._nonce = binascii.unhexlify(ARGS[0])
res = []
for hexp in ARGS[1:]:
    try:
        res.append(s.check(0x20, binascii.unhexlify(hexp)).decode())
    except CommandError as e:
        res.append(e.args[0])
print(json.dumps(res))
""", nonce.hex(), second.hex(), first.hex(), bytes(forged).hex(), second.hex())
    # counters must rise: 'second' (counter 2) first makes 'first' (counter 1) a replay
    assert out == ["again", "replay", "auth_failed", "replay"]


def test_the_meter_seals_its_replies_and_the_host_opens_only_those(run_mpy, tmp_path):
    """A reply is bound to the key, the session, the request (its type and counter) and the
    reply's type: a tampered body, a reply to another request, an OK passed off as an error or
    a request's own tag passed off as a reply all fail on the host."""
    import pytest

    from meterfw.errors import TransportError

    key, nonce = bytes(range(32)), bytes(16)
    (tmp_path / "meter.key").write_bytes(key)
    auth = AuthSession(key, nonce)
    first, second = auth.seal(0x12, b""), auth.seal(0x12, b"")
    out = run_mpy("""
import binascii
from bootloader.auth import Sessions
s = Sessions("meter.key")
s._nonce = bytes(16)
res = []
for hexp in ARGS:
    s.check(0x12, binascii.unhexlify(hexp))
    reply = b'{"status": 3}'
    res.append(binascii.hexlify(reply + s.seal(0x92, 0x12, reply)).decode())  # the tag follows the reply
print(json.dumps(res))
""", first.hex(), second.hex())
    reply1, reply2 = bytes.fromhex(out[0]), bytes.fromhex(out[1])
    assert auth.open_reply(first, 0x12, 0x92, reply1) == b'{"status": 3}'
    assert auth.open_reply(second, 0x12, 0x92, reply2) == b'{"status": 3}'
    tampered = reply1.replace(b"3", b"4")
    for request, reply_type, reply in ((first, 0x92, tampered), (second, 0x92, reply1), (first, 0xFF, reply1),
                                       (first, 0x92, reply1[-16:]), (first, 0x92, b""),
                                       (first, 0x92, b'{"status": 3}' + first[-16:])):
        with pytest.raises(TransportError, match="failed authentication"):
            auth.open_reply(request, 0x12, reply_type, reply)
