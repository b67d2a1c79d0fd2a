# The meter runtime's read commands: registers (the billing read, which carries the alarms that
# wait for it), the meter state, time, alarms and the display. Open to anyone on the link.
# Loaded for each request and dropped after it (loader.py), so the heap carries none of it while
# the meter meters; kept small because the image reader loads a module in one piece.


def lifetime_mwh(m):
    """Delivered energy over the meter's life: the register plus what resets took away."""
    return m.metering.registers()[0] + m.metering.open.reset_mwh


def _prepayment(m):
    st = m.state
    if not st.get("prepay_on"):
        return None
    # The credit counts down with delivered energy since it was set (its base), so the meter
    # state itself never changes with consumption: its hash stays put between commands.
    used_wh = (lifetime_mwh(m) - st.get("credit_base_mwh")) // 1000
    credit_wh = st.get("credit_wh")
    return {"credit_wh": credit_wh, "used_wh": used_wh, "balance_wh": credit_wh - used_wh}


async def registers(m, _payload):
    """The billing read: registers now, and the alarms that wait for it (FR16 next-read)."""
    mt = m.metering
    o = mt.open
    reg, reg_rx, _, _ = mt.registers()
    last = mt.log.last
    return {"time_s": m.board.clock.time_ms() // 1000,
            "delivered_mwh": reg, "received_mwh": reg_rx, "net_mwh": reg - reg_rx,
            "lifetime_delivered_mwh": reg + o.reset_mwh, "lifetime_received_mwh": reg_rx + o.reset_rx_mwh,
            "resets": o.resets, "multiplier": m.state.get("multiplier"), "prepayment": _prepayment(m),
            "last_interval_seq": last[0] if last else 0, "alarms": m.outbox.listing(deferred_only=True)}


async def state(m, _payload):
    import state_json
    out = state_json.to_dict(m.state)
    out["relay"].update(relay_status(m))
    if out["prepayment"]["enabled"]:
        out["prepayment"].update(_prepayment(m))
    return out


async def time_get(m, _payload):
    import metering_clock
    now_ms = m.board.clock.time_ms()
    return {"time_ms": now_ms, "valid": metering_clock.valid(m.metering, now_ms // 1000)}


def _pos(closed):
    return "connected" if closed else "disconnected"


def relay_status(m):
    hw = m.board.relay
    closed = hw.closed() if hw else None
    return {"fitted": hw is not None, "latched": None if hw is None else _pos(closed),
            "commanded": _pos(m.state.relay_connected), "agrees": hw is None or closed == m.state.relay_connected}


async def alarms(m, _payload):
    return {"alarms": m.outbox.listing(), "pushes": m.outbox.pushes}


async def display(m, _payload):
    return {"text": m.notices.text}
