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

_M = 0xFFFFFFFFFFFFFFFF

# Round constants, FIPS 180-4 section 4.2.3.  A tuple: exactly sized (a
# list may carry spare capacity) and safe from accidental modification.
_K = (
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
)

# Initial hash value, FIPS 180-4 section 5.3.5.
_H0 = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)


def _schedule(w, block):
    # Expand one 128-byte block into the 80-word message schedule `w`, a
    # list reused for every block: growing a fresh list needs a contiguous
    # 1 KB reallocation per block, which fails early on a fragmented heap.
    M = _M
    i = 0
    for x in struct.unpack(">16Q", block):
        w[i] = x
        i += 1
    for t in range(16, 80):
        x = w[t - 15]
        xx = x | (x << 64)
        s0 = (((xx >> 1) ^ (xx >> 8)) & M) ^ (x >> 7)
        x = w[t - 2]
        xx = x | (x << 64)
        s1 = (((xx >> 19) ^ (xx >> 61)) & M) ^ (x >> 6)
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & M


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
        ee = e | (e << 64)
        t1 = (h + (((ee >> 14) ^ (ee >> 18) ^ (ee >> 41)) & M)
              + (((f ^ g) & e) ^ g) + K[t] + w[t])
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
    # `w` the 80-entry schedule scratch list.
    _schedule(w, block)
    s = list(h)
    _rounds(s, w, 0, 80)
    _fold(h, s)


def _compress_steps(h, w, block):
    # Same as _compress, as a generator that pauses (yields None) after each
    # of three similar-sized parts: a whole block takes several times the
    # pause interval the Ed25519 verifier aims for.
    _schedule(w, block)
    yield
    s = list(h)
    _rounds(s, w, 0, 40)
    yield
    _rounds(s, w, 40, 80)
    _fold(h, s)
    yield


class sha512:
    # Same surface as hashlib.sha512 for the parts Ed25519 needs.
    digest_size = 64
    block_size = 128

    def __init__(self, data=None):
        self._h = list(_H0)
        self._w = [0] * 80  # schedule scratch, see _schedule()
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
