# Health check items about the data (see health.py): record CRCs, registers against the
# pre-switch snapshot, the meter state's hash against it. Loaded with them and dropped after.
import asyncio
import metering_restart
import snapshot
import store

PASS = "pass"
FAIL = "fail"
_HAN_TABLE = "/data/han"  # han_table.PATH, not imported: its code would load for nothing on a meter without a HAN


def scan(log):
    """Check every interval record's CRC: (records read, damaged records)."""
    bad0 = log.bad_records
    total = 0
    for n in log.segments:
        recs, _ = log.read_segment(n)
        total += len(recs)
    return total, log.bad_records - bad0


async def data(m, ctx):
    n, bad = scan(m.metering.log)
    await asyncio.sleep_ms(0)
    damaged = ["%d interval records" % bad] if bad else []
    for name, path in (("meter state", m.state.path), ("outbox", m.outbox.path), ("snapshot", snapshot.PATH),
                       ("HAN device table", _HAN_TABLE)):
        if store.load(path)[1] == "damaged":
            damaged.append(name)
    if metering_restart.load(m.metering.open) is None:
        damaged.append("open interval")
    if damaged:
        return FAIL, "CRC errors: " + ", ".join(damaged), n
    return PASS, None, n


async def registers(m, ctx):
    snap = snapshot.load()
    if snap is None:
        return PASS, "no pre-switch snapshot to compare with", None
    reg, reg_rx, fe, fe_rx = m.metering.registers()
    if m.metering.open.resets != snap.resets:
        return PASS, "registers reset since the snapshot, as asked and logged", None
    if fe < snap.frontend_mwh or fe_rx < snap.frontend_rx_mwh:
        return PASS, "front-end restarted since the snapshot; nothing to compare", None
    d = reg - (snap.register_mwh + fe - snap.frontend_mwh)
    d_rx = reg_rx - (snap.register_rx_mwh + fe_rx - snap.frontend_rx_mwh)
    if d or d_rx:
        return FAIL, "registers differ from the pre-switch snapshot by %d/%d mWh" % (d, d_rx), d
    return PASS, None, 0


async def meter_state(m, ctx):
    st = m.state
    if st.recovered and st.recovered != "unrenamed copy":
        return FAIL, "meter state " + st.recovered, st.seq
    snap = snapshot.load()
    if snap is None or st.seq > snap.state_seq:
        return PASS, None, st.seq  # changed since only by authenticated commands, each logged
    if st.seq < snap.state_seq or st.hash_bytes() != snap.state_hash:
        return FAIL, "meter state differs from the pre-switch snapshot", st.seq
    return PASS, None, st.seq
