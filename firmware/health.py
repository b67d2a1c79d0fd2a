# Post-boot health check. Each check returns None when it passes or a message when not;
# its severity decides what the boot does: critical -> revert, important -> report and stay.
import asyncio
import os

CRITICAL = "critical"
IMPORTANT = "important"


async def _metrology_advances(board, metering):
    a = board.energy_mwh()
    await asyncio.sleep_ms(1100)  # the front-end accumulates whole seconds
    if board.energy_mwh() <= a:
        return "metrology front-end does not advance"
    return None


async def _storage_round_trip(board, metering):
    path = "/data/.health"
    probe = b"meterfw-health"
    with open(path, "wb") as f:
        f.write(probe)
    with open(path, "rb") as f:
        ok = f.read() == probe
    os.remove(path)
    return None if ok else "storage scratch write does not read back"


async def _intervals_readable(board, metering):
    metering.log.read(max(0, (metering.log.last or (0,))[0] - 1), 2)
    return None


CHECKS = (
    ("metrology", CRITICAL, _metrology_advances),
    ("storage", CRITICAL, _storage_round_trip),
    ("intervals", IMPORTANT, _intervals_readable),
)


async def run(board, metering):
    """Returns a list of (name, severity, message or None)."""
    results = []
    for name, severity, check in CHECKS:
        try:
            msg = await check(board, metering)
        except (OSError, ValueError) as e:
            msg = "%s: %s" % (name, e)
        results.append((name, severity, msg))
    return results
