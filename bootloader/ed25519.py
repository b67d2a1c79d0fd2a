# Ed25519 signature verification (RFC 8032, section 5.1.7) for MicroPython.
#
# Verification only: the meter checks firmware manifests signed on the host;
# it never holds a private key.  Pure Python on MicroPython's arbitrary
# precision ints, so it also runs under CPython, where tests cross-check it
# against the `cryptography` package.
#
# Method: decode A, hash k = SHA-512(R || A || M) mod L, compute
# R' = [S]B - [k]A with one interleaved double-and-add over width-w NAF digits
# of S and k (about 253 doublings plus ~80 additions), then compare the
# encoding of R' with the R bytes of the signature.  That is the cofactorless
# check RFC 8032 allows ("sufficient, but not required"); comparing encodings
# also rejects non-canonical or off-curve R without decoding it.
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

from array import array

from .sha512 import sha512

# Big constants cannot be const(): const() only folds small ints.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752

# NAF window widths.  B's table is a constant (_BTAB, 16 points), so it can
# be wider than A's, which is rebuilt for every verification (8 points).
_WB = const(6)
_WA = const(5)

# Default pause interval for verify_async, in field multiplications (one
# point operation is 8).  About 12 point operations: comparable to the
# fixed pause interval inside SHA-512 (a third of a block).
_SLICE = const(96)


def _table(blob):
    # 32-byte little-endian field elements, three per point.  Kept as one
    # hex string in the source because 48 separate int literals need
    # several KB more heap when the module is compiled from source.
    out = []
    for i in range(0, len(blob), 96):
        out.append((int.from_bytes(blob[i:i + 32], "little"),
                    int.from_bytes(blob[i + 32:i + 64], "little"),
                    int.from_bytes(blob[i + 64:i + 96], "little")))
    return tuple(out)


# [1]B, [3]B, ..., [31]B as affine (y + x, y - x, 2d*x*y), Z = 1: a
# precomputed constant rather than a cache built on first use, because
# (a) built mid-verification its ~60 long-lived objects would end up
# scattered through a heap full of big-int garbage and fragment it for the
# rest of the application, while at import they are allocated together, and
# (b) with Z = 1 an addition needs one multiplication less.  Generated with
# plain affine Edwards arithmetic; tests/device/test_ed25519_device.py
# recomputes it.
_BTAB = _table(bytes.fromhex(
    "853b8cf5c693bc2f190e8cfbc62d93cfc2423d6498480b2765bad4333a9dcf07"  # 1B
    "3e9140d70539109db3be40d1059f39fd098a8f683484c1a56712f898922ffd44"
    "68aa7a870512c9ab9ec4aacc23e8d9268c5943ddcb7d1b5aa8650c9f687b116f"
    "3097ee4ca8b025af8a4b86e830845a023267019f02501bc1f4f8809a1b4e167a"  # 3B
    "65d2fca4e81f61567dbac1e5fd53d33bbdd64b211af3318162da5b558715b92a"
    "89d8d00d3f93ae1462da351c222394584cdbf28c45e570d1c6b4b912af26285a"
    "33bba50844bc12a202ed5ec7c348508d44ecbf5a0ceb1bddeb06e246f1cc4529"  # 5B
    "bad647a4c382917fb729274bd11400d587a064b81cf13ce3f3551beb737e4a15"
    "85822a81f1dbbbbcfcd1bdd007080e272da7bd1b0b671bb49ab63b6b69beaa43"
    "bfa34e94d05c1a6bd2c09db33a357074492e54288252b2717e923c2869ea1b46"  # 7B
    "b12132aa9a2c6fbaa723ba3b5321a06c3a2c19924f76ea9de017532e5ddd6e1d"
    "a2b3b801c86d83f19aa43e05475f03b3f3ad7758ba419c52a7900f6a1cbb9f7a"
    "2f63a8a68a672e9bc546bc516f9e50a6b5f586c6c933b2ce597fdd8a33edb934"  # 9B
    "64809d037e216ef39b4120f5b681a09844b05ee708c6cb968f9cdcfa515ac049"
    "1baf4590bfe8b4062fd219a7e883ffe216cfd49329fcf6aa068b001b0272c173"
    "de2a808a8400bf2f272e3002cffed9e50634701771843e11af8f6d54e2aa7542"  # 11B
    "48438649025b5f318183087769b3d63e95eb8d6a5575a0a37fc7d5298059ab18"
    "e98960fdc52c2bd8a4e48232a1b41e0322861ab59911314448f93db52255c63d"
    "6d7f00a222c270bfdbdebcb59ab384bf07ba07fb120e7a5341f246c3eed74f23"  # 13B
    "93bf7f323b016f506b6f779bc9ebfcae6859adaa32b2129da72460172d886702"
    "78a32e7319a1605371d48ddfb1e6372433e5a791f837efa2637809aafda67b49"
    "a0eacf1303ccce246d249c188dc24886d0d4f2c1fabdbd2d2be72df11729e261"  # 15B
    "0bcf8c4686cd0b04d610992aa49b82d39251b20708300875bf5ed01842cdb543"
    "16b5d09b2f769a5deede3f374eaf38eb7042d6937d5a2e0342d8e40a21611d51"
    "819d0e95ef76c6924f04d7c0cd2046a548128f6f64369baae355b8dd2459326d"  # 17B
    "87de204448861308b4ed92b516f01c8a252d9429274efa39102848e26ffea771"
    "54c8c8a5b882716c032a5ffe7914fd330c8d77831859cf72a9ea9e55b6c44647"
    "2b9ac66d3c7b77d317f6896f27b2fadeb5163ab5f71c6545b79ffe34de519a5c"  # 19B
    "47117464c846853449c8fc0eddae357d32a37206769a93ffd6e6b57d49639621"
    "670ef179cff110f55b5158e6a1daddff7722141017a7c309bb2382603c500448"
    "c77fa32cd09e24c4abac15a6e3a059a0230e6ec9d76ea9886d695016a5983355"  # 21B
    "75d1363ad221683b329e9be9a70ab4bb478a8320e45c9e5d5e4cde5888091e77"
    "df1e4578d2f5129acb9c8985795dda3a0895a59f2d4a7f4711a6f58fd6d15e5a"
    "830e15fe2a129511d8354b7e259a20cf201e711e29f88773f092bfd897b8ac44"  # 23B
    "59735258c5e0e5ba7e9ddbca195c2e39e9ab1cda1e3c652844dcef5f13609b01"
    "834b135e1468601e164c30244fe6f5c4d73e1afca8886e50922fade6fd490c15"
    "3811470995f27b8e51a6754f39ef6f5dad08a725c479af102299b95b075a2b6b"  # 25B
    "68a8dc9c3c8649b8d04a71b8db443fc88d16360c56e33efec1fb051e79d7a678"
    "76b9a0474b70bf58d548177455b301a690f542d5b11f2baa005dd54afc7f5c72"
    "b299cfd1156742e4340da20211d552739f10128b7b15d123a3f3b17c27c94c79"  # 27B
    "c098d01cf72b809166635eeda46c41fe4c990249715d58dfe7fa55f82546d54c"
    "5350acc226c4f64a5872f632aded9abc2110310af132d02a858ecc6f7b350870"
    "013f77382767880bfbccfb95fac8ccb8b629adb9a3d52d8d6a0fad51987eef06"  # 29B
    "344a5882bb9f1bd02b79b4d26364ab47026253489c6331b628d4d669362aa913"
    "e57d57c01c7793ca5cdc35501ee4407571e002d8010f68246af82a8adf6d293c"
    "13a714d9f915adae12f98f8cf97b2fa930d7539f1723f8afba770c4993d3997a"  # 31B
    "41251fbb2e4debfc1fb9ad40c71095b805ada1d07da371fc7b714707702c890a"
    "e8a3bd3624ed528f9407e85741c8a877e09c2f266365a9a5d2f70283d2626728"
))


# --- field helpers ---------------------------------------------------------


def _due(c, cost):
    # Charge `cost` field multiplications to the pause counter c = [spent,
    # budget]; True when the caller should yield.
    c[0] += cost
    if c[0] >= c[1]:
        c[0] = 0
        return True
    return False


def _sqn(x, n, c):
    # x^(2^n) mod p, in chunks so a pause can fall between them.  The
    # built-in 3-argument pow runs the squarings in C, faster than a loop.
    P = _P
    while n:
        # Up to the rest of the current budget, so pauses stay evenly spaced.
        m = c[1] - c[0]
        if m > n:
            m = n
        elif m < 1:
            m = 1
        x = pow(x, 1 << m, P)
        n -= m
        if _due(c, m):
            yield
    return x


def _pow_250(z, c):
    # Returns (z^(2^250 - 1), z^11): the common head of the addition chains
    # for inversion and for the square root (ref10 fe_invert/fe_pow22523).
    # 250 squarings and 11 multiplications, against ~255 + ~250 for a plain
    # square-and-multiply over p - 2.
    P = _P
    z2 = z * z % P
    z9 = pow(z2, 4, P) * z % P
    z11 = z9 * z2 % P
    t = z11 * z11 % P * z9 % P                  # 2^5 - 1
    t5 = t
    t = (yield from _sqn(t, 5, c)) * t5 % P     # 2^10 - 1
    t10 = t
    t = (yield from _sqn(t, 10, c)) * t10 % P   # 2^20 - 1
    t = (yield from _sqn(t, 20, c)) * t % P     # 2^40 - 1 (uses 2^20 - 1)
    t = (yield from _sqn(t, 10, c)) * t10 % P   # 2^50 - 1
    t50 = t
    t = (yield from _sqn(t, 50, c)) * t50 % P   # 2^100 - 1
    t = (yield from _sqn(t, 100, c)) * t % P    # 2^200 - 1
    t = (yield from _sqn(t, 50, c)) * t50 % P   # 2^250 - 1
    return t, z11


def _inv(z, c):
    # z^(p - 2) = z^(2^255 - 21) = (z^(2^250 - 1))^(2^5) * z^11.
    t, z11 = yield from _pow_250(z, c)
    return (yield from _sqn(t, 5, c)) * z11 % _P


def _pow22523(z, c):
    # z^((p - 5) / 8) = z^(2^252 - 3) = (z^(2^250 - 1))^4 * z.
    t, _ = yield from _pow_250(z, c)
    return (yield from _sqn(t, 2, c)) * z % _P


# --- points ----------------------------------------------------------------
# Extended twisted Edwards coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z,
# x*y = T/Z (Hisil-Wong-Carter-Dawson 2008, a = -1).  Coordinates are reduced
# after every multiplication only; sums feeding a multiplication stay
# unreduced since a % on a 257-bit value costs more than a slightly longer
# product.  T is computed only when the next operation is an addition:
# doubling does not read it.


def _dbl(p, want_t):
    P = _P
    X, Y, Z = p[0], p[1], p[2]
    a = X * X % P
    b = Y * Y % P
    cc = Z * Z * 2 % P
    h = a + b
    s = X + Y
    e = h - s * s % P
    g = a - b
    f = cc + g
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _cached(p):
    # (Y + X, Y - X, 2Z, 2d*T): the precomputable half of an addition.
    X, Y, Z, T = p
    return ((Y + X) % _P, (Y - X) % _P, 2 * Z % _P, T * _D2 % _P)


def _add(p, q, want_t):
    # p + q, q in _cached() form.
    P = _P
    X, Y, Z, T = p
    a = (Y - X) * q[1] % P
    b = (Y + X) * q[0] % P
    cc = T * q[3] % P
    d = Z * q[2] % P
    e = b - a
    f = d - cc
    g = d + cc
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _sub(p, q, want_t):
    # p - q, q in _cached() form.  -q = (-x, y) swaps Y+X with Y-X and
    # negates T, so this is _add with those roles swapped.
    P = _P
    X, Y, Z, T = p
    a = (Y - X) * q[0] % P
    b = (Y + X) * q[1] % P
    cc = T * q[3] % P
    d = Z * q[2] % P
    e = b - a
    f = d + cc
    g = d - cc
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _madd(p, q, want_t):
    # p + q, q an affine entry of _BTAB (Z = 1, so Z1 * 2Z2 is Z1 + Z1).
    P = _P
    X, Y, Z, T = p
    a = (Y - X) * q[1] % P
    b = (Y + X) * q[0] % P
    cc = T * q[2] % P
    d = Z + Z
    e = b - a
    f = d - cc
    g = d + cc
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _msub(p, q, want_t):
    # p - q, q an affine entry of _BTAB; see _sub for the swapped roles.
    P = _P
    X, Y, Z, T = p
    a = (Y - X) * q[0] % P
    b = (Y + X) * q[1] % P
    cc = T * q[2] % P
    d = Z + Z
    e = b - a
    f = d + cc
    g = d - cc
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _odd_multiples(p, n, c):
    # [p, 3p, 5p, ..., (2n - 1)p] in _cached() form.
    p2 = _cached(_dbl(p, True))
    out = [_cached(p)]
    for _ in range(n - 1):
        p = _add(p, p2, True)
        out.append(_cached(p))
        if _due(c, 9):
            yield
    return out


def _wnaf(k, w):
    # Width-w NAF of 0 <= k < 2^253 (both scalars are < L) as 256 digits, least
    # significant first: every non-zero digit is odd with |digit| < 2^(w-1),
    # and a non-zero digit is followed by at least w-1 zeros, so only ~1 in
    # w+1 positions needs an addition.  Bits are read from a byte string so
    # the loop runs on small ints only (no big-int allocation); same
    # algorithm as libsecp256k1's secp256k1_ecmult_wnaf.
    b = k.to_bytes(35, "little")  # 3 spare bytes: windows read 3 at a time
    # Signed bytes: 256 bytes instead of a 1-2 KB list of ints.
    out = array("b", bytes(256))
    full = 1 << w
    mask = full - 1
    carry = 0
    i = 0
    while i < 256:
        if (b[i >> 3] >> (i & 7)) & 1 == carry:
            i += 1
            continue
        j = i >> 3
        d = (((b[j] | (b[j + 1] << 8) | (b[j + 2] << 16)) >> (i & 7)) & mask) + carry
        carry = (d >> (w - 1)) & 1
        out[i] = d - (carry << w)
        i += w
    return out


def _decode(s, c):
    # RFC 8032 section 5.1.3.  Returns an extended point, or None if `s` is
    # not a canonical encoding of a curve point.
    P = _P
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (_D * yy + 1) % P
    v3 = v * v % P * v % P
    x = yield from _pow22523(u * v3 % P * v3 % P * v % P, c)
    x = u * v3 % P * x % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * _SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


# --- verification ------------------------------------------------------------


def _steps(pk, msg, sig, budget):
    # Generator: yields None where a pause may happen, then the bool result.
    P = _P
    c = [0, budget]

    if len(pk) != 32 or len(sig) != 64:
        yield False
        return
    s = int.from_bytes(sig[32:], "little")
    # Non-canonical S would make signatures malleable (RFC 8032 5.1.7 step 1).
    if s >= _L:
        yield False
        return

    a = yield from _decode(pk, c)
    if a is None:
        yield False
        return
    # Beyond RFC 8032: refuse small-order keys ([8]A = neutral).  No real key
    # has small order, but with, e.g., A = neutral the cofactorless equation
    # holds for R = neutral, S = 0 and every message.  Three doublings.
    e = _dbl(_dbl(_dbl(a, False), False), False)
    if e[0] == 0 and e[1] == e[2]:
        yield False
        return
    e = None
    yield

    h = sha512()
    h.update(sig[:32])
    h.update(pk)
    yield from h.update_steps(msg)
    k = int.from_bytes((yield from h.digest_steps()), "little") % _L
    h = None

    ns = _wnaf(s, _WB)
    yield
    nk = _wnaf(k, _WA)
    yield

    tb = _BTAB
    ta = yield from _odd_multiples(a, 1 << (_WA - 2), c)
    a = None

    top = 255
    while top >= 0 and not (ns[top] or nk[top]):
        top -= 1
    r = (0, 1, 1, 0)  # neutral element
    for i in range(top, -1, -1):
        ds = ns[i]
        dk = nk[i]
        r = _dbl(r, ds or dk)
        cost = 8
        # [k]A is subtracted, so a positive digit of k means subtraction.
        if dk > 0:
            r = _sub(r, ta[dk >> 1], ds)
            cost += 8
        elif dk < 0:
            r = _add(r, ta[(-dk) >> 1], ds)
            cost += 8
        if ds > 0:
            r = _madd(r, tb[ds >> 1], False)
            cost += 7
        elif ds < 0:
            r = _msub(r, tb[(-ds) >> 1], False)
            cost += 7
        if _due(c, cost):
            yield

    zi = yield from _inv(r[2], c)
    x = r[0] * zi % P
    y = r[1] * zi % P
    yield (y | ((x & 1) << 255)).to_bytes(32, "little") == sig[:32]


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


async def verify_async(public_key, message, signature, budget=_SLICE):
    """verify() that awaits asyncio.sleep_ms(0) roughly every `budget` field
    multiplications (8 per point operation), so other tasks keep running."""
    # Imported here so verify() users do not pay for asyncio.
    import asyncio

    try:
        pause = asyncio.sleep_ms
    except AttributeError:  # CPython's asyncio has no sleep_ms
        def pause(_):
            return asyncio.sleep(0)

    g = _start(public_key, message, signature, max(1, budget))
    if g is not None:
        for r in g:
            if r is not None:
                return r
            await pause(0)
    return False
