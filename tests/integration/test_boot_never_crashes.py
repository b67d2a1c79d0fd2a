"""The boot path never crashes, whatever a slot holds: a manifest of the wrong shape, missing keys
or not JSON at all is a clean "not bootable", and the meter ends in a running application or the
recovery console, never at the REPL. (Before, a slot manifest without payload_size raised KeyError
out of the slot check, past the boot's handlers: main.py ended.)"""
import json

import pytest

from hil.flashfs import mounted
from meterfw import protocol as P
from meterfw.image import assemble, canonical_json, parse_image


def _with_manifest(image: bytes, raw: bytes) -> bytes:
    img = parse_image(image)
    return assemble(raw, img.signatures, img.payload)


def _bad_manifests(good: dict) -> dict:
    return {
        "missing payload_size": canonical_json({k: v for k, v in good.items() if k != "payload_size"}),
        "version a number": canonical_json({**good, "version": 7}),
        "a list": b"[]",
        "not json": b"{\"board\":",
    }


@pytest.mark.parametrize("case", ["missing payload_size", "version a number", "a list", "not json"])
def test_a_malformed_active_slot_ends_in_the_recovery_console(board, images, sim_factory, case):
    board.needs("files")
    v1 = images["v1"].read_bytes()
    bad = _with_manifest(v1, _bad_manifests(parse_image(v1).manifest)[case])
    board.sim.stop()
    with mounted(board.sim.dir / "flash.img") as fs:
        with fs.open("/slots/a.mfw", "wb") as f:
            f.write(bad)
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port
    meter = board.meter()
    st = meter.wait_until(lambda s: True, 30)
    meter.link.close()
    assert st is not None, board.console()[-3000:]
    assert st.get("mode") == "recovery", st
    assert "does not verify" in st["recovery_reason"] and "manifest" in st["recovery_reason"], st


def test_a_malformed_slot_beside_a_good_one_is_reported_not_fatal(board, images, sim_factory):
    # The inactive slot is read for status (its version) and for a revert target.
    board.needs("files")
    v1 = images["v1"].read_bytes()
    board.sim.stop()
    with mounted(board.sim.dir / "flash.img") as fs:
        with fs.open("/slots/b.mfw", "wb") as f:
            f.write(_with_manifest(v1, b"[1, 2]"))
    board.sim = sim_factory(dir=board.sim.dir)
    board.port = board.sim.port
    meter = board.meter()
    st = meter.wait_until(lambda s: s.get("health") is not None, 30)
    assert meter.link.request(P.PING, b"ok") == b"ok"
    meter.link.close()
    assert st is not None, board.console()[-3000:]
    assert st["active_version"] == "1.0.0" and st["slots"]["b"]["version"] is None, json.dumps(st)[:400]
