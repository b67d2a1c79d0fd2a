# Edwards25519 arithmetic for Ed25519 verification (bootloader/ed25519.py), the curve half of a
# check. check() computes R' = [S]B - [k]A with one interleaved double-and-add over width-w NAF digits of S
# and k (about 253 doublings plus ~80 additions) and compares the encoding of R' with the R bytes of
# the signature. That is the cofactorless check RFC 8032 allows ("sufficient, but not required");
# comparing encodings also rejects non-canonical or off-curve R without decoding it. Pure Python on
# MicroPython's arbitrary precision ints, so it also runs under CPython.

from array import array

_P = 2**255 - 19
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752

# NAF window widths: 8 precomputed points for B (the constant _BTAB) and 4 for A (rebuilt for every
# verification). Wider windows save a few additions (~10% of a check) for more heap at the check's
# peak, the most the meter ever holds: 0.8 KB more for B's table at 6, 1.3 KB for A's at 5.
_WB = 5
_WA = 4


def _bpoint(i):
    # Entry i of _BTAB, three little-endian field elements of 32 bytes, in _cached() form.
    o = 96 * i
    tb = _BTAB
    return (int.from_bytes(tb[o:o + 32], "little"), int.from_bytes(tb[o + 32:o + 64], "little"), 2,
            int.from_bytes(tb[o + 64:o + 96], "little"))


# [1]B, [3]B, ..., [15]B as affine (y + x, y - x, 2d*x*y), Z = 1: a precomputed constant rather than
# a cache built on first use, kept as one bytes constant (768 bytes, referenced in place from the
# loaded module) and decoded per use: as 24 big ints it would hold 2 KB more of heap while the
# module is loaded, and as a hex string 0.8 KB more. tests/device/test_ed25519_device.py recomputes
# it.
_BTAB = (
    b"\x85\x3b\x8c\xf5\xc6\x93\xbc\x2f\x19\x0e\x8c\xfb\xc6\x2d\x93\xcf\xc2\x42\x3d\x64\x98\x48\x0b\x27\x65\xba\xd4\x33\x3a\x9d\xcf\x07"  # 1B
    b"\x3e\x91\x40\xd7\x05\x39\x10\x9d\xb3\xbe\x40\xd1\x05\x9f\x39\xfd\x09\x8a\x8f\x68\x34\x84\xc1\xa5\x67\x12\xf8\x98\x92\x2f\xfd\x44"
    b"\x68\xaa\x7a\x87\x05\x12\xc9\xab\x9e\xc4\xaa\xcc\x23\xe8\xd9\x26\x8c\x59\x43\xdd\xcb\x7d\x1b\x5a\xa8\x65\x0c\x9f\x68\x7b\x11\x6f"
    b"\x30\x97\xee\x4c\xa8\xb0\x25\xaf\x8a\x4b\x86\xe8\x30\x84\x5a\x02\x32\x67\x01\x9f\x02\x50\x1b\xc1\xf4\xf8\x80\x9a\x1b\x4e\x16\x7a"  # 3B
    b"\x65\xd2\xfc\xa4\xe8\x1f\x61\x56\x7d\xba\xc1\xe5\xfd\x53\xd3\x3b\xbd\xd6\x4b\x21\x1a\xf3\x31\x81\x62\xda\x5b\x55\x87\x15\xb9\x2a"
    b"\x89\xd8\xd0\x0d\x3f\x93\xae\x14\x62\xda\x35\x1c\x22\x23\x94\x58\x4c\xdb\xf2\x8c\x45\xe5\x70\xd1\xc6\xb4\xb9\x12\xaf\x26\x28\x5a"
    b"\x33\xbb\xa5\x08\x44\xbc\x12\xa2\x02\xed\x5e\xc7\xc3\x48\x50\x8d\x44\xec\xbf\x5a\x0c\xeb\x1b\xdd\xeb\x06\xe2\x46\xf1\xcc\x45\x29"  # 5B
    b"\xba\xd6\x47\xa4\xc3\x82\x91\x7f\xb7\x29\x27\x4b\xd1\x14\x00\xd5\x87\xa0\x64\xb8\x1c\xf1\x3c\xe3\xf3\x55\x1b\xeb\x73\x7e\x4a\x15"
    b"\x85\x82\x2a\x81\xf1\xdb\xbb\xbc\xfc\xd1\xbd\xd0\x07\x08\x0e\x27\x2d\xa7\xbd\x1b\x0b\x67\x1b\xb4\x9a\xb6\x3b\x6b\x69\xbe\xaa\x43"
    b"\xbf\xa3\x4e\x94\xd0\x5c\x1a\x6b\xd2\xc0\x9d\xb3\x3a\x35\x70\x74\x49\x2e\x54\x28\x82\x52\xb2\x71\x7e\x92\x3c\x28\x69\xea\x1b\x46"  # 7B
    b"\xb1\x21\x32\xaa\x9a\x2c\x6f\xba\xa7\x23\xba\x3b\x53\x21\xa0\x6c\x3a\x2c\x19\x92\x4f\x76\xea\x9d\xe0\x17\x53\x2e\x5d\xdd\x6e\x1d"
    b"\xa2\xb3\xb8\x01\xc8\x6d\x83\xf1\x9a\xa4\x3e\x05\x47\x5f\x03\xb3\xf3\xad\x77\x58\xba\x41\x9c\x52\xa7\x90\x0f\x6a\x1c\xbb\x9f\x7a"
    b"\x2f\x63\xa8\xa6\x8a\x67\x2e\x9b\xc5\x46\xbc\x51\x6f\x9e\x50\xa6\xb5\xf5\x86\xc6\xc9\x33\xb2\xce\x59\x7f\xdd\x8a\x33\xed\xb9\x34"  # 9B
    b"\x64\x80\x9d\x03\x7e\x21\x6e\xf3\x9b\x41\x20\xf5\xb6\x81\xa0\x98\x44\xb0\x5e\xe7\x08\xc6\xcb\x96\x8f\x9c\xdc\xfa\x51\x5a\xc0\x49"
    b"\x1b\xaf\x45\x90\xbf\xe8\xb4\x06\x2f\xd2\x19\xa7\xe8\x83\xff\xe2\x16\xcf\xd4\x93\x29\xfc\xf6\xaa\x06\x8b\x00\x1b\x02\x72\xc1\x73"
    b"\xde\x2a\x80\x8a\x84\x00\xbf\x2f\x27\x2e\x30\x02\xcf\xfe\xd9\xe5\x06\x34\x70\x17\x71\x84\x3e\x11\xaf\x8f\x6d\x54\xe2\xaa\x75\x42"  # 11B
    b"\x48\x43\x86\x49\x02\x5b\x5f\x31\x81\x83\x08\x77\x69\xb3\xd6\x3e\x95\xeb\x8d\x6a\x55\x75\xa0\xa3\x7f\xc7\xd5\x29\x80\x59\xab\x18"
    b"\xe9\x89\x60\xfd\xc5\x2c\x2b\xd8\xa4\xe4\x82\x32\xa1\xb4\x1e\x03\x22\x86\x1a\xb5\x99\x11\x31\x44\x48\xf9\x3d\xb5\x22\x55\xc6\x3d"
    b"\x6d\x7f\x00\xa2\x22\xc2\x70\xbf\xdb\xde\xbc\xb5\x9a\xb3\x84\xbf\x07\xba\x07\xfb\x12\x0e\x7a\x53\x41\xf2\x46\xc3\xee\xd7\x4f\x23"  # 13B
    b"\x93\xbf\x7f\x32\x3b\x01\x6f\x50\x6b\x6f\x77\x9b\xc9\xeb\xfc\xae\x68\x59\xad\xaa\x32\xb2\x12\x9d\xa7\x24\x60\x17\x2d\x88\x67\x02"
    b"\x78\xa3\x2e\x73\x19\xa1\x60\x53\x71\xd4\x8d\xdf\xb1\xe6\x37\x24\x33\xe5\xa7\x91\xf8\x37\xef\xa2\x63\x78\x09\xaa\xfd\xa6\x7b\x49"
    b"\xa0\xea\xcf\x13\x03\xcc\xce\x24\x6d\x24\x9c\x18\x8d\xc2\x48\x86\xd0\xd4\xf2\xc1\xfa\xbd\xbd\x2d\x2b\xe7\x2d\xf1\x17\x29\xe2\x61"  # 15B
    b"\x0b\xcf\x8c\x46\x86\xcd\x0b\x04\xd6\x10\x99\x2a\xa4\x9b\x82\xd3\x92\x51\xb2\x07\x08\x30\x08\x75\xbf\x5e\xd0\x18\x42\xcd\xb5\x43"
    b"\x16\xb5\xd0\x9b\x2f\x76\x9a\x5d\xee\xde\x3f\x37\x4e\xaf\x38\xeb\x70\x42\xd6\x93\x7d\x5a\x2e\x03\x42\xd8\xe4\x0a\x21\x61\x1d\x51"
)


# --- field helpers ---------------------------------------------------------


def _sqn(x, n):
    # x^(2^n) mod p, 8 squarings (a point operation's work) at a time so a pause can fall between.
    # The built-in 3-argument pow runs the squarings in C, faster than a loop.
    while n:
        m = min(n, 8)
        x = pow(x, 1 << m, _P)
        n -= m
        yield
    return x


def _pow_250(z):
    # Returns (z^(2^250 - 1), z^11): the common head of the addition chains for inversion and for
    # the square root (ref10 fe_invert/fe_pow22523). 250 squarings and 11 multiplications, against
    # ~255 + ~250 for a plain square-and-multiply over p - 2.
    P = _P
    z2 = z * z % P
    z9 = pow(z2, 4, P) * z % P
    z11 = z9 * z2 % P
    t = z11 * z11 % P * z9 % P                  # 2^5 - 1
    t5 = t
    t = (yield from _sqn(t, 5)) * t5 % P     # 2^10 - 1
    t10 = t
    t = (yield from _sqn(t, 10)) * t10 % P   # 2^20 - 1
    t = (yield from _sqn(t, 20)) * t % P     # 2^40 - 1 (uses 2^20 - 1)
    t = (yield from _sqn(t, 10)) * t10 % P   # 2^50 - 1
    t50 = t
    t = (yield from _sqn(t, 50)) * t50 % P   # 2^100 - 1
    t = (yield from _sqn(t, 100)) * t % P    # 2^200 - 1
    t = (yield from _sqn(t, 50)) * t50 % P   # 2^250 - 1
    return t, z11


def _inv(z):
    # z^(p - 2) = z^(2^255 - 21) = (z^(2^250 - 1))^(2^5) * z^11.
    t, z11 = yield from _pow_250(z)
    return (yield from _sqn(t, 5)) * z11 % _P


def _pow22523(z):
    # z^((p - 5) / 8) = z^(2^252 - 3) = (z^(2^250 - 1))^4 * z.
    t, _ = yield from _pow_250(z)
    return (yield from _sqn(t, 2)) * z % _P


# --- points ----------------------------------------------------------------
# Extended twisted Edwards coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z
# (Hisil-Wong-Carter-Dawson 2008, a = -1). Coordinates are reduced after every multiplication only;
# sums feeding a multiplication stay unreduced since a % on a 257-bit value costs more than a
# slightly longer product. T is computed only when the next operation is an addition: doubling does
# not read it.


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


def _add(p, q, neg, want_t):
    # p + q, or p - q when `neg`, q in _cached() form: -q = (-x, y) swaps Y+X with Y-X and negates
    # T.
    P = _P
    X, Y, Z, T = p
    if neg:
        a = (Y - X) * q[0] % P
        b = (Y + X) * q[1] % P
        cc = -T * q[3] % P
    else:
        a = (Y - X) * q[1] % P
        b = (Y + X) * q[0] % P
        cc = T * q[3] % P
    d = Z * q[2] % P
    e = b - a
    f = d - cc
    g = d + cc
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P if want_t else 0)


def _odd_multiples(p, n):
    # [p, 3p, 5p, ..., (2n - 1)p] in _cached() form.
    p2 = _cached(_dbl(p, True))
    out = [_cached(p)]
    for _ in range(n - 1):
        p = _add(p, p2, False, True)
        out.append(_cached(p))
        yield
    return out


def _wnaf(k, w):
    # Width-w NAF of 0 <= k < 2^253 (both scalars are < L) as 256 digits, least significant first:
    # every non-zero digit is odd with |digit| < 2^(w-1), and a non-zero digit is followed by at
    # least w-1 zeros, so only ~1 in w+1 positions needs an addition. Bits are read from a byte
    # string so the loop runs on small ints only (no big-int allocation); same algorithm as
    # libsecp256k1's secp256k1_ecmult_wnaf.
    b = k.to_bytes(35, "little")  # 3 spare bytes: windows read 3 at a time
    # Signed bytes: 256 bytes instead of a 1-2 KB list of ints.
    out = array("b", bytes(256))
    mask = (1 << w) - 1
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


def _decode(s):
    # RFC 8032 section 5.1.3. Returns an extended point, or None if `s` is not a canonical encoding
    # of a curve point.
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
    x = yield from _pow22523(u * v3 % P * v3 % P * v % P)
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


# --- the check ---------------------------------------------------------------


def check(pk, r_bytes, s, k):
    """Generator: yields None where a pause may fall (after each point operation or its worth),
    and returns True when [S]B - [k]A encodes as R. A is the 32-byte key; s, k are scalars below
    L."""
    P = _P
    a = yield from _decode(pk)
    if a is None:
        return False
    # Beyond RFC 8032: refuse small-order keys ([8]A = neutral). No real key has small order, but
    # with, e.g., A = neutral the cofactorless equation holds for R = neutral, S = 0 and every
    # message. Three doublings.
    e = _dbl(_dbl(_dbl(a, False), False), False)
    if e[0] == 0 and e[1] == e[2]:
        return False
    e = None
    yield

    ns = _wnaf(s, _WB)
    yield
    nk = _wnaf(k, _WA)
    yield

    ta = yield from _odd_multiples(a, 1 << (_WA - 2))
    a = None

    top = 255
    while top >= 0 and not (ns[top] or nk[top]):
        top -= 1
    r = (0, 1, 1, 0)  # neutral element
    for i in range(top, -1, -1):
        ds = ns[i]
        dk = nk[i]
        r = _dbl(r, ds or dk)
        # [k]A is subtracted, so a positive digit of k means subtraction.
        if dk:
            r = _add(r, ta[abs(dk) >> 1], dk > 0, ds)
        if ds:
            r = _add(r, _bpoint(abs(ds) >> 1), ds < 0, False)
        yield

    zi = yield from _inv(r[2])
    x = r[0] * zi % P
    y = r[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little") == r_bytes
