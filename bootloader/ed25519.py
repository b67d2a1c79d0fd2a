# Ed25519 signature verification (RFC 8032, section 5.1.7) for MicroPython.
#
# Verification only: the meter checks firmware manifests signed on the host;
# it never holds a private key.  Pure Python on MicroPython's arbitrary
# precision ints, so it also runs under CPython, where tests cross-check it
# against the `cryptography` package.
#
# Method: hash k = SHA-512(R || A || M) mod L, then check [S]B - [k]A = R on
# the curve (bootloader/edwards.py).  Each half loads its module for itself
# and forgets it after, so a verify's peak heap is the larger half, not both.
#
# All work happens in one generator (_steps) that yields None at pause points
# and finally yields the bool result.  verify() runs it straight through;
# verify_async() sleeps between pauses so other asyncio tasks (metering) keep
# running during the ~340 point operations.

try:
    from micropython import const
except ImportError:  # CPython, for host-side cross-checks
    def const(x):
        return x


_L = 2**252 + 27742317777372353535851937790883648493

# Pause points, in field multiplications (one point operation is 8): one
# point operation, about 9 ms on a Pico.  verify_async awaits at a pause
# point once _PAUSE_MS have passed since it last did, so the stretches other
# tasks wait through are bounded in time on any CPU, and a fast one is not
# slowed by an await per point operation.
_SLICE = const(8)
_PAUSE_MS = const(10)


# --- verification ------------------------------------------------------------


def _challenge(r, pk, msg):
    # k = SHA-512(R || A || M) mod L.  SHA-512 is loaded for this hash alone
    # and forgotten before the curve arithmetic starts: the two never share
    # the heap, which is what a verify's peak is made of.
    from . import sha512, forget

    yield  # loading a module takes ~20 ms on a Pico: a pause may follow it
    try:
        h = sha512.sha512(r)
        h.update(pk)
        yield from h.update_steps(msg)
        d = yield from h.digest_steps()
    finally:
        h = sha512 = None
        forget("sha512")
    return int.from_bytes(d, "little") % _L


def _steps(pk, msg, sig, budget):
    # Generator: yields None where a pause may happen, then the bool result.
    if len(pk) != 32 or len(sig) != 64:
        yield False
        return
    s = int.from_bytes(sig[32:], "little")
    # Non-canonical S would make signatures malleable (RFC 8032 5.1.7 step 1).
    if s >= _L:
        yield False
        return
    k = yield from _challenge(sig[:32], pk, msg)
    yield
    from . import edwards, forget

    yield
    try:
        ok = yield from edwards.check(pk, sig[:32], s, k, [0, budget])
    finally:
        edwards = None
        forget("edwards")
    yield ok

def _as_bytes(b):
    # Any buffer (bytes, bytearray, memoryview) to an immutable bytes copy,
    # so verify_async sees one consistent message even if the caller's
    # buffer changes while it is paused.  None for non-buffers (int, None...)
    # and for str, which MicroPython would otherwise accept as a buffer
    # where CPython refuses it.
    if isinstance(b, bytes):
        return b
    if isinstance(b, str):
        return None
    try:
        return bytes(memoryview(b))
    except TypeError:
        return None


def _start(public_key, message, signature, budget):
    pk = _as_bytes(public_key)
    msg = _as_bytes(message)
    sig = _as_bytes(signature)
    if pk is None or msg is None or sig is None:
        return None
    return _steps(pk, msg, sig, budget)


def verify(public_key, message, signature):
    """True if `signature` (64 bytes) is a valid Ed25519 signature of
    `message` under `public_key` (32 bytes); False otherwise, including for
    malformed input."""
    g = _start(public_key, message, signature, _SLICE)
    if g is not None:
        for r in g:
            if r is not None:
                return r
    return False


async def verify_async(public_key, message, signature, budget=_SLICE, pause_ms=_PAUSE_MS):
    """verify() that awaits asyncio.sleep_ms(0) at the first pause point (one
    every `budget` field multiplications) after `pause_ms` of work, so other
    tasks keep running."""
    # Imported here so verify() users do not pay for asyncio.
    import asyncio
    import time

    try:
        pause = asyncio.sleep_ms
    except AttributeError:  # CPython's asyncio has no sleep_ms
        def pause(_):
            return asyncio.sleep(0)

    try:
        ticks, diff = time.ticks_ms, time.ticks_diff
    except AttributeError:  # CPython
        def ticks():
            return int(time.monotonic() * 1000)

        def diff(a, b):
            return a - b
    g = _start(public_key, message, signature, max(1, budget))
    if g is not None:
        t = ticks()
        for r in g:
            if r is not None:
                return r
            if diff(ticks(), t) >= pause_ms:
                await pause(0)
                t = ticks()
    return False
