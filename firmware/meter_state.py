# Meter state (FR1, FR26-29, FR31, FR34): relay and limiting, load and DG control, NEM channels,
# pulse output, multiplier, power-quality settings, prepayment, scheduled pricing (CPP) and grid
# load-control events, and the reporting and health settings. One binary record, versioned and
# CRC-protected, preserved bit for bit across upgrade, revert and power loss: nothing but an
# authenticated command changes it, and its hash (over the body bytes) goes into status.
#
# Record: magic "MST1" | version u16 | body_len u16 | seq u32 | body | crc32 (store.py).
# Body: the fixed fields (state_schema.FIELDS, in its order), the pricing events, the grid
# events, then any bytes a newer firmware appended. Versions only ever append, and a body from a
# newer version keeps its tail when this one rewrites it, so a revert never loses what the newer
# image stored.
#
# This module is what the running meter needs; reading the record as JSON and validating
# changes is state_json.py and state_edit.py, loaded only for those commands (it spares the heap).
import hashlib
import struct
import sys
from binascii import hexlify
from micropython import const
import store

_MAGIC = b"MST1"
VERSION = const(1)
_HEAD = "<4sHHI"
_HEAD_SIZE = const(12)
PRICING = "<IIB"
PRICING_SIZE = const(9)
GRID = "<IIBB"
GRID_SIZE = const(10)
PATH = "/data/state"


def _from_schema():
    # What the running meter reads of the field table; the table itself leaves the heap.
    import state_schema as s
    sys.modules.pop("state_schema", None)
    fmt, names, values = "<", [], []
    for name, code, value, _, _, _, _ in s.FIELDS:
        fmt += code
        names.append(name)
        values.append(value)
    return fmt, tuple(names), tuple(values), s.HEALTH_ITEMS, s.SEVERITIES, s.ALARM_CODES, s.REPORT_INVERTED


# FIXED: the fixed fields' struct format; NAMES: their names, in the same order.
FIXED, NAMES, _FACTORY, HEALTH_ITEMS, SEVERITIES, ALARM_CODES, REPORT_INVERTED = _from_schema()
FIXED_SIZE = struct.calcsize(FIXED)
del _from_schema


def factory():
    return list(_FACTORY)


class MeterState:
    def __init__(self, path=PATH, events=None):
        self.path = path
        self.events = events
        self.seq = 0
        self.version = VERSION
        self.fixed = factory()
        self.pricing = []  # (start_s, end_s, tier)
        self.grid = []     # (start_s, end_s, kind, level_pct)
        self._tail = b""
        self.recovered = None  # why the record was not read as it was, if it was not
        body, status = store.load(path)
        if body is not None and self._decode(body):
            if status == "new":
                self.recovered = "unrenamed copy"
            self.body = self.encode()
            return
        if status != "missing" or body is not None:
            self.recovered = "damaged record replaced by factory settings"
            self._keep_damaged()
        self.body = self.encode()
        self.save()

    # -- the record ---------------------------------------------------------------------------
    def _decode(self, raw):
        if len(raw) < _HEAD_SIZE + FIXED_SIZE:
            return False
        magic, version, blen, seq = struct.unpack_from(_HEAD, raw, 0)
        if magic != _MAGIC or blen != len(raw) - _HEAD_SIZE:
            return False
        off = _HEAD_SIZE
        f = list(struct.unpack_from(FIXED, raw, off))
        off += FIXED_SIZE
        n_p, n_g = f[NAMES.index("n_pricing")], f[NAMES.index("n_grid")]
        end = off + n_p * PRICING_SIZE + n_g * GRID_SIZE
        if end > len(raw):
            return False
        self.pricing = [struct.unpack_from(PRICING, raw, off + i * PRICING_SIZE) for i in range(n_p)]
        off += n_p * PRICING_SIZE
        self.grid = [struct.unpack_from(GRID, raw, off + i * GRID_SIZE) for i in range(n_g)]
        self.version, self.seq, self.fixed = max(version, VERSION), seq, f
        self._tail = bytes(raw[end:])
        return True

    def encode(self):
        f = self.fixed
        f[NAMES.index("n_pricing")], f[NAMES.index("n_grid")] = len(self.pricing), len(self.grid)
        body = bytearray(FIXED_SIZE + len(self.pricing) * PRICING_SIZE + len(self.grid) * GRID_SIZE)
        struct.pack_into(FIXED, body, 0, *f)
        off = FIXED_SIZE
        for e in self.pricing:
            struct.pack_into(PRICING, body, off, *e)
            off += PRICING_SIZE
        for e in self.grid:
            struct.pack_into(GRID, body, off, *e)
            off += GRID_SIZE
        return bytes(body) + self._tail

    def save(self):
        store.save(self.path, struct.pack(_HEAD, _MAGIC, self.version, len(self.body), self.seq) + self.body)

    def _keep_damaged(self):
        # Keep the damaged bytes for the investigation; the meter runs on factory settings.
        try:
            with open(self.path, "rb") as src, open(self.path + ".bad", "wb") as dst:
                dst.write(src.read())
        except OSError:
            pass

    def hash_bytes(self):
        return hashlib.sha256(self.body).digest()

    def hash(self):
        return hexlify(self.hash_bytes()).decode()

    # -- what the running meter reads (state_edit.py changes it) -----------------------------
    def get(self, name):
        """A fixed field's stored value, by its name in state_schema.FIELDS."""
        return self.fixed[NAMES.index(name)]

    @property
    def relay_connected(self):
        return bool(self.get("relay"))

    def limit_w(self):
        return self.get("limit_w") if self.get("limit_on") else 0

    def reports_at_once(self, code):
        """True if alarm `code` is pushed at once; False if it waits for the next read."""
        for i, c in enumerate(ALARM_CODES):
            if c == code:
                return bool((self.get("report_mask") ^ REPORT_INVERTED) >> i & 1)
        return True

    def severity(self, item, default):
        s = self.get("severities") >> (2 * HEALTH_ITEMS.index(item)) & 3
        return default if s == 0 else SEVERITIES[s]

    def pricing_events(self):
        """Scheduled pricing (CPP) events as (start_s, end_s): activation avoids them (FR30)."""
        return [(e[0], e[1]) for e in self.pricing]
