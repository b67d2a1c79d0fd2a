# A delta update's blocks (host_tools/meterfw/delta.py builds them). Each is the recipe of one
# block of the new image: ranges of the image this meter runs, copied from its slot, and literal
# bytes, raw or deflated. The expanded block goes to the platform's transfer as if the host had
# sent it whole, so what the meter writes, verifies and activates is the full image, byte for
# byte; the running image's slot is only read. Loaded with the update agent while a delta runs.
import deflate
import io
import struct
from bootloader.api import CommandError, slot_path

_WBITS = 11  # the host packs a block's literals with a 2 KiB window: a whole block
_COPY = 0x43  # b"C": u32 offset, u16 length of the running image's slot file
_LIT = 0x4C  # b"L": u16 length of the next literal bytes


class Expander:
    def __init__(self, platform, block_size):
        self._base = open(slot_path(platform.slot), "rb")
        self._base_size = self._base.seek(0, 2)
        # n u32, then the block: one buffer for every block, so a delta's blocks allocate no
        # block-sized buffer each on a heap that may have none in one piece.
        self._out = bytearray(4 + block_size)

    def close(self):
        self._base.close()

    def expand(self, payload):
        """The block a recipe (n u32, then the recipe) describes: n u32, then its bytes."""
        if len(payload) < 8:
            raise CommandError("bad_block", "a delta block is its number and a recipe of 4 bytes at least")
        n, lit_len, packed = struct.unpack_from("<IHH", payload, 0)
        out = memoryview(self._out)
        out[:4] = memoryview(payload)[:4]
        pos = 8 + (packed or lit_len)
        if pos > len(payload):
            raise CommandError("bad_block", "delta block %d is cut short" % n)
        if packed:
            lits = deflate.DeflateIO(io.BytesIO(bytes(payload[8:pos])), deflate.RAW, _WBITS)
        else:
            lits = io.BytesIO(bytes(payload[8:pos]))
        end = 4
        while pos < len(payload):
            op = payload[pos]
            if op == _COPY and pos + 7 <= len(payload):
                src, k = struct.unpack_from("<IH", payload, pos + 1)
                pos += 7
                # Checked before the seek: past the file, one port's seek raises OSError, another's
                # (32 bits) OverflowError.
                if src + k > self._base_size:
                    raise CommandError("bad_block", "delta block %d copies from past its base image" % n)
                f = self._base
                f.seek(src)
            elif op == _LIT and pos + 3 <= len(payload):
                (k,) = struct.unpack_from("<H", payload, pos + 1)
                pos += 3
                f = lits
            else:
                raise CommandError("bad_block", "delta block %d has a malformed op at byte %d" % (n, pos))
            if end + k > len(out):
                raise CommandError("bad_block", "delta block %d makes more than a block" % n)
            _fill(f, out[end:end + k], n)
            end += k
        return out[:end]


def _fill(f, buf, n):
    got = 0
    while got < len(buf):
        k = f.readinto(buf[got:])
        if not k:
            raise CommandError("bad_block", "delta block %d reads past its base image or literals" % n)
        got += k
