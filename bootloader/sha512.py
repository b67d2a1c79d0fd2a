# SHA-512 (FIPS 180-4) in pure Python for MicroPython, for Ed25519's hash of a signature check.
#
# MicroPython's hashlib has no SHA-512 (micropython issue #8017). A signature covers a role prefix
# and the image id, so the meter only ever hashes one short message in one go: a generator that
# pauses every 10 rounds (a block takes ~80 ms on a Pico).
#
# Every 64-bit word is a big int on the device (small ints are 31 bits on rp2), so each arithmetic
# operation allocates. The rounds keep the big-int operations per round low: rotations are taken
# from a 128-bit "doubled" copy of the word (one shift per rotation instead of two shifts and an
# OR), and masking to 64 bits is done once per result.
import struct
from array import array

_M = 0xFFFFFFFFFFFFFFFF

# Round constants, FIPS 180-4 section 4.2.3: 640 bytes in one array. As int literals they would stay
# loaded as 80 big ints (they exceed MicroPython's small ints) at ~64 bytes of heap each, since an
# .mpy keeps its constants for as long as the module lives; one hex string costs 1280.
_K = array("Q", struct.unpack(">80Q", bytes.fromhex(
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc"
    "3956c25bf348b53859f111f1b605d019923f82a4af194f9bab1c5ed5da6d8118"
    "d807aa98a303024212835b0145706fbe243185be4ee4b28c550c7dc3d5ffb4e2"
    "72be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235c19bf174cf692694"
    "e49b69c19ef14ad2efbe4786384f25e30fc19dc68b8cd5b5240ca1cc77ac9c65"
    "2de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5"
    "983e5152ee66dfaba831c66d2db43210b00327c898fb213fbf597fc7beef0ee4"
    "c6e00bf33da88fc2d5a79147930aa72506ca6351e003826f142929670a0e6e70"
    "27b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed53380d139d95b3df"
    "650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353b"
    "a2bfe8a14cf10364a81a664bbc423001c24b8b70d0f89791c76c51a30654be30"
    "d192e819d6ef5218d69906245565a910f40e35855771202a106aa07032bbd1b8"
    "19a4c116b8d2d0c81e376c085141ab532748774cdf8eeb9934b0bcb5e19b48a8"
    "391c0cb3c5c95a634ed8aa4ae3418acb5b9cca4f7763e373682e6ff3d6b2b8a3"
    "748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532b"
    "ca273eceea26619cd186b8c721c0c207eada7dd6cde0eb1ef57d4f7fee6ed178"
    "06f067aa72176fba0a637dc5a2c898a6113f9804bef90dae1b710b35131c471b"
    "28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc431d67c49c100d4c"
    "4cc5d4becb3e42b6597f299cfc657e2a5fcb6fab3ad6faec6c44198c4a475817"
)))

# Initial hash value, FIPS 180-4 section 5.3.5.
_H0 = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)


def digest(data):
    """Generator: SHA-512 of the bytes `data`, pausing (yields None) every 10 rounds; yields the
    64-byte digest last."""
    n = len(data)
    # Padded to 112 mod 128, then the 128-bit length.
    data = data + b"\x80" + bytes((111 - n) % 128) + struct.pack(">QQ", 0, n * 8)
    h = _H0
    for i in range(0, len(data), 128):
        # The schedule's window: 16 words, each replaced as the rounds reach the next 16 (_rounds).
        w = list(struct.unpack_from(">16Q", data, i))
        s = h
        for t in range(0, 80, 10):
            s = _rounds(s, w, t, t + 10)
            yield
        h = [(x + y) & _M for x, y in zip(h, s)]
    yield struct.pack(">8Q", *h)


def _rounds(s, w, first, end):
    # Rounds first..end-1 on the working variables `s`; returns them. Only locals in the loop:
    # global and attribute lookups cost a dict search per access in MicroPython.
    M = _M
    K = _K
    a, b, c, d, e, f, g, h = s
    # Maj(a, b, c) == b ^ ((a ^ b) & (b ^ c)), and this round's b ^ c is the previous round's a ^ b,
    # so carrying it saves one operation per round.
    bc = b ^ c
    for t in range(first, end):
        j = t & 15
        if t >= 16:  # schedule word t replaces word t - 16 in the window
            x = w[(t - 15) & 15]
            xx = x | (x << 64)
            s0 = (((xx >> 1) ^ (xx >> 8)) & M) ^ (x >> 7)
            x = w[(t - 2) & 15]
            xx = x | (x << 64)
            s1 = (((xx >> 19) ^ (xx >> 61)) & M) ^ (x >> 6)
            w[j] = (w[j] + s0 + w[(t - 7) & 15] + s1) & M
        ee = e | (e << 64)
        t1 = (h + (((ee >> 14) ^ (ee >> 18) ^ (ee >> 41)) & M)
              + (((f ^ g) & e) ^ g) + K[t] + w[j])
        aa = a | (a << 64)
        ab = a ^ b
        t2 = (((aa >> 28) ^ (aa >> 34) ^ (aa >> 39)) & M) + (b ^ (ab & bc))
        bc = ab
        h = g
        g = f
        f = e
        e = (d + t1) & M
        d = c
        c = b
        b = a
        a = (t1 + t2) & M
    return a, b, c, d, e, f, g, h
