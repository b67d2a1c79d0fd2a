# The pre-switch snapshot: what the meter looked like just before it switched images (activate
# or revert). The next image's health check compares against it: registers must equal the
# snapshot's plus what the front-end counted since, and the meter state must hash the same.
# Loaded to take it (the platform's before_switch) and to check against it (loader.py).
import struct
import store
from intervals import SEQ

PATH = "/data/snapshot"
# time_s last_seq register register_rx frontend frontend_rx resets state_seq state_hash
_FMT = "<IIqqQQII32s"


class Snapshot:
    def __init__(self, fields):
        (self.time_s, self.last_seq, self.register_mwh, self.register_rx_mwh, self.frontend_mwh,
         self.frontend_rx_mwh, self.resets, self.state_seq, self.state_hash) = fields


def save(time_s, last_seq, register, register_rx, frontend, frontend_rx, resets, state_seq, state_hash,
         path=None):
    store.save(path or PATH, struct.pack(_FMT, time_s, last_seq, register, register_rx, frontend,
                                         frontend_rx, resets, state_seq, state_hash))


def take(mt, path=None):
    """The snapshot of the meter that `mt` (metering.Metering) meters, stored just before the
    reset into another image."""
    reg, reg_rx, fe, fe_rx = mt.registers()
    st = mt.state
    last = mt.log.last
    save(mt.board.clock.time_ms() // 1000, last[SEQ] if last else 0, reg, reg_rx, fe, fe_rx, mt.open.resets,
         st.seq if st else 0, st.hash_bytes() if st else bytes(32), path)


def load(path=None):
    """The snapshot, or None if there is none (or it is damaged: store.load says which)."""
    body, _ = store.load(path or PATH)
    if body is None or len(body) != struct.calcsize(_FMT):
        return None
    return Snapshot(struct.unpack(_FMT, body))
