# Ed25519 signature verification (RFC 8032, section 5.1.7) for MicroPython.
#
# Verification only: the meter checks firmware manifests signed on the host; it never holds a
# private key. Pure Python on MicroPython's arbitrary precision ints.
#
# Method: hash k = SHA-512(R || A || M) mod L, then check [S]B - [k]A = R on the curve
# (bootloader/edwards.py). Each half loads its module for itself and forgets it after, so a verify's
# peak heap is the larger half, not both. The work is one generator (_steps) that yields None at
# pause points and the bool result last; verify() awaits between pauses so other asyncio tasks
# (metering) keep running during the ~340 point operations.
import asyncio
import time

_L = 2**252 + 27742317777372353535851937790883648493

# Pause points, in field multiplications (one point operation is 8): one point operation, about 9 ms
# on a Pico. verify awaits at a pause point once _PAUSE_MS have passed since it last did, so the
# stretches other tasks wait through are bounded in time on any CPU, and a fast one is not slowed by
# an await per point operation.
_SLICE = 8
_PAUSE_MS = 10


def _steps(pk, msg, sig, budget):
    s = int.from_bytes(sig[32:], "little")
    # A non-canonical S would make signatures malleable (RFC 8032 5.1.7 step 1).
    if len(pk) != 32 or len(sig) != 64 or s >= _L:
        yield False
        return
    # SHA-512 is loaded for this hash alone and forgotten before the curve arithmetic starts: the
    # two never share the heap, which is what a verify's peak is made of.
    from . import sha512, forget

    yield  # loading a module takes ~20 ms on a Pico: a pause may follow it
    try:
        for d in sha512.digest(sig[:32] + pk + msg):
            if d is None:
                yield
    finally:
        sha512 = None
        forget("sha512")
    k = int.from_bytes(d, "little") % _L
    from . import edwards

    yield
    try:
        ok = yield from edwards.check(pk, sig[:32], s, k, [0, budget])
    finally:
        edwards = None
        forget("edwards")
    yield ok


def _as_bytes(b):
    # Any buffer (bytes, bytearray, memoryview) to an immutable bytes copy, so verify sees one
    # consistent message even if the caller's buffer changes while it is paused. None for
    # non-buffers (int, None...) and for str, which MicroPython would otherwise accept as a buffer.
    if isinstance(b, bytes):
        return b
    if isinstance(b, str):
        return None
    try:
        return bytes(memoryview(b))
    except TypeError:
        return None


async def verify(public_key, message, signature, budget=_SLICE, pause_ms=_PAUSE_MS):
    """True if `signature` (64 bytes) is a valid Ed25519 signature of `message` under
    `public_key` (32 bytes); False otherwise, including for malformed input. Awaits
    asyncio.sleep_ms(0) at the first pause point (one every `budget` field multiplications)
    after `pause_ms` of work, so other tasks keep running."""
    pk, msg, sig = _as_bytes(public_key), _as_bytes(message), _as_bytes(signature)
    if pk is None or msg is None or sig is None:
        return False
    t = time.ticks_ms()
    for r in _steps(pk, msg, sig, max(1, budget)):
        if r is not None:
            return r
        if time.ticks_diff(time.ticks_ms(), t) >= pause_ms:
            await asyncio.sleep_ms(0)
            t = time.ticks_ms()
