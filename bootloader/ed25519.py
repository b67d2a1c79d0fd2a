# Ed25519 signature verification (RFC 8032, section 5.1.7), for the manifests signed on the host:
# the meter never holds a private key. Pure Python on MicroPython's arbitrary precision ints.
#
# k = SHA-512(R || A || M) mod L (bootloader/sha512.py), then [S]B - [k]A = R on the curve
# (bootloader/edwards.py). Each half loads its module for itself and forgets it after, so a verify's
# peak heap is the larger half, not both. One generator (_steps) does the work, yielding None at
# pause points and the bool result last; verify() awaits between pauses so other asyncio tasks
# (metering) keep running during the ~340 point operations.
import asyncio
import time

_L = 2**252 + 27742317777372353535851937790883648493

# A pause point follows every point operation or its worth, about 9 ms on a Pico. verify awaits at
# one once _PAUSE_MS have passed since it last did, so the stretches other tasks wait through are
# bounded in time on any CPU, and a fast one is not slowed by an await per point operation.
_PAUSE_MS = 10


def _steps(pk, msg, sig):
    s = int.from_bytes(sig[32:], "little")
    # A non-canonical S would make signatures malleable (RFC 8032 5.1.7 step 1).
    if len(pk) != 32 or len(sig) != 64 or s >= _L:
        yield False
        return
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
        ok = yield from edwards.check(pk, sig[:32], s, k)
    finally:
        edwards = None
        forget("edwards")
    yield ok


async def verify(public_key, message, signature, pause_ms=_PAUSE_MS):
    """True if `signature` (64 bytes) is a valid Ed25519 signature of `message` under
    `public_key` (32 bytes); False otherwise, including for malformed input and for arguments
    other than bytes (a buffer could change while verify pauses). Awaits asyncio.sleep_ms(0) at
    the first pause point after `pause_ms` of work, so other tasks keep running."""
    if not (type(public_key) is type(message) is type(signature) is bytes):
        return False
    t = time.ticks_ms()
    for r in _steps(public_key, message, signature):
        if r is not None:
            return r
        if time.ticks_diff(time.ticks_ms(), t) >= pause_ms:
            await asyncio.sleep_ms(0)
            t = time.ticks_ms()
