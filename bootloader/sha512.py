# SHA-512 (FIPS 180-4) in pure Python for MicroPython.
#
# MicroPython's hashlib has no SHA-512 (micropython issue #8017), yet Ed25519
# needs it.  The same file runs under CPython so host tests can cross-check it
# against hashlib.
#
# Every 64-bit word is a big int on the device (small ints are 31 bits on rp2),
# so each arithmetic operation allocates.  The round function is written to
# keep the number of big-int operations per round low: rotations are taken
# from a 128-bit "doubled" copy of the word (one shift per rotation instead of
# two shifts and an OR), and masking to 64 bits is done once per result rather
# than after every addition.

import struct
from array import array

_M = 0xFFFFFFFFFFFFFFFF

# Round constants, FIPS 180-4 section 4.2.3: 640 bytes in one array.  As
# int literals they would stay loaded as 80 big ints (they exceed
# MicroPython's small ints) at ~64 bytes of heap each, since an .mpy keeps
# its constants for as long as the module lives; one hex string costs 1280.
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


def _schedule(w, block):
    # Load one 128-byte block's 16 words into `w`, the message schedule's
    # window, a list reused for every block.  The other 64 words are made as
    # the rounds reach them (_rounds), each over the word 16 back: a window of
    # 16 big ints rather than 80, 4 KB less at a signature check's peak.
    i = 0
    for x in struct.unpack(">16Q", block):
        w[i] = x
        i += 1


def _rounds(s, w, first, end):
    # Rounds first..end-1 on the working variables `s` (list of 8, in place).
    # Split from the block loop so a cooperative caller can pause between
    # parts of a block.  Only locals in the loop: global and attribute
    # lookups cost a dict search per access in MicroPython.
    M = _M
    K = _K
    a, b, c, d, e, f, g, h = s
    # Maj(a, b, c) == b ^ ((a ^ b) & (b ^ c)), and this round's b ^ c is the
    # previous round's a ^ b, so carrying it saves one operation per round.
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
    s[0] = a
    s[1] = b
    s[2] = c
    s[3] = d
    s[4] = e
    s[5] = f
    s[6] = g
    s[7] = h


def _fold(h, s):
    M = _M
    for i in range(8):
        h[i] = (h[i] + s[i]) & M


def _compress(h, w, block):
    # One 128-byte block; `h` is the 8-word state list, updated in place,
    # `w` the 16-word schedule window.
    _schedule(w, block)
    s = list(h)
    _rounds(s, w, 0, 80)
    _fold(h, s)


def _compress_steps(h, w, block):
    # Same as _compress, as a generator that pauses (yields None) every 10
    # rounds: a whole block takes ~80 ms on a Pico, eight times the pause
    # interval the Ed25519 verifier aims for.
    _schedule(w, block)
    s = list(h)
    for t in range(0, 80, 10):
        _rounds(s, w, t, t + 10)
        yield
    _fold(h, s)


class sha512:
    # Same surface as hashlib.sha512 for the parts Ed25519 needs.
    digest_size = 64
    block_size = 128

    def __init__(self, data=None):
        self._h = list(_H0)
        self._w = [0] * 16  # the message schedule's window, see _schedule()
        self._buf = b""
        self._n = 0  # total message length in bytes, for the length field
        if data is not None:
            self.update(data)

    def update(self, data):
        h = self._h
        w = self._w
        for block in self._blocks(data):
            _compress(h, w, block)

    def update_steps(self, data):
        # Generator form of update(): yields None at points where a
        # cooperative caller may hand the CPU to other tasks.
        h = self._h
        w = self._w
        for block in self._blocks(data):
            yield from _compress_steps(h, w, block)

    def _blocks(self, data):
        # Buffer `data` and yield each complete 128-byte block, so update()
        # and update_steps() share the buffering logic.
        data = memoryview(data)
        n = len(data)
        self._n += n
        i = 0
        if self._buf:
            need = 128 - len(self._buf)
            if n < need:
                self._buf += bytes(data)
                return
            yield self._buf + bytes(data[:need])
            self._buf = b""
            i = need
        # Whole blocks straight from the caller's buffer: slicing a memoryview
        # does not copy the payload.
        while n - i >= 128:
            yield data[i:i + 128]
            i += 128
        if i < n:
            self._buf = bytes(data[i:])

    def copy(self):
        c = sha512()
        c._h = list(self._h)
        c._buf = self._buf
        c._n = self._n
        return c

    def _final(self):
        # Padded tail on a copy of the state, so update() can still be called
        # after digest(), as with hashlib.
        bits = self._n * 8
        tail = self._buf + b"\x80"
        # Pad to 112 mod 128, leaving room for the 128-bit length field.
        tail += bytes((112 - len(tail)) % 128)
        tail += struct.pack(">QQ", (bits >> 64) & _M, bits & _M)
        return list(self._h), tail

    def digest(self):
        h, tail = self._final()
        for i in range(0, len(tail), 128):
            _compress(h, self._w, tail[i:i + 128])
        return struct.pack(">8Q", *h)

    def digest_steps(self):
        # Generator form of digest(): yields None at pause points and
        # returns the digest (use `d = yield from h.digest_steps()`).
        h, tail = self._final()
        for i in range(0, len(tail), 128):
            yield from _compress_steps(h, self._w, tail[i:i + 128])
        return struct.pack(">8Q", *h)

    def hexdigest(self):
        return "".join("%02x" % b for b in self.digest())
