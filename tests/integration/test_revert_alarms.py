"""Every automatic revert raises one alarm (FR15), posted by the image the meter went back to:
after a crash at import, a hang (watchdog), a failed critical health check, a trial whose attempts
ran out, an image on trial that no longer verifies. The failed activation's ack option decides
how it is reported (FR16: pushed at once, or held for the next read), else the reporting policy.
Exactly once per revert, through power cuts in the boot that raises it. An operator's revert is
logged and raises none: it was asked for."""
import json
import time

import pytest

from hil.flashfs import mounted

FIRMWARE_REVERTED = 155
CAUSES = ["crash", "hang", "health", "attempts", "verify"]  # the alarm's value: the index


def revert_alarms(meter) -> list[dict]:
    return [a for a in meter.read_alarms() if a["code"] == FIRMWARE_REVERTED]


def wait_settled(meter) -> dict:
    """The status once the meter runs 1.0.0 again and this boot's health check has reported:
    its boot tasks raised the revert's alarm, if any, before the check."""
    st = meter.wait_until(lambda s: s.get("active_version") == "1.0.0" and s.get("health") is not None
                          and s["update"].get("result") == "reverted", 90)
    assert st is not None, "the meter did not come back on 1.0.0 after the revert"
    return st


def upload(meter, image) -> None:
    meter.upload(image.read_bytes())
    meter.verify()


def on_trial(meter) -> dict:
    st = meter.wait_until(lambda s: s.get("trial") and s.get("active_version") == "1.1.0", 60)
    assert st is not None, "the new image did not start its trial"
    return st


def slot_file_damaged(board, path="/slots/b.mfw") -> None:
    """The image on trial, bit-flipped in its payload while the meter is off: it no longer verifies."""
    with mounted(board.dir / "flash.img") as fs:
        with fs.open(path, "rb") as f:
            data = bytearray(f.read())
        data[-1] ^= 0xFF
        with fs.open(path, "wb") as f:
            f.write(bytes(data))


# Each scenario takes a fresh meter on 1.0.0 to a revert of one faulty 1.1.0 image, its activation
# with `ack`, by one cause.
def crash(make_board, variant_images, ack):
    board = make_board()
    m = board.meter()
    upload(m, variant_images["crash_at_import"])
    m.activate("now", ack=ack)
    return board, m


def hang(make_board, variant_images, ack):
    board = make_board(watchdog_ms=1500, trial_attempts=1)  # one attempt: the first hang reverts
    board.needs("watchdog")
    m = board.meter()
    upload(m, variant_images["hang"])
    m.activate("now", ack=ack)
    return board, m


def health(make_board, variant_images, ack):
    board = make_board()
    m = board.meter()
    upload(m, variant_images["critical_health"])
    m.activate("now", ack=ack)
    return board, m


def attempts(make_board, variant_images, ack):
    # Its health check takes 20 s: the power goes during its one attempt, before any verdict.
    board = make_board(trial_attempts=1)
    board.needs("power")
    m = board.meter()
    upload(m, variant_images["slow_health"])
    m.activate("now", ack=ack)
    on_trial(m)
    board.power_cycle()
    return board, m


def verify(make_board, variant_images, ack):
    # On trial (a health check of 20 s), the power goes; meanwhile its slot is damaged.
    board = make_board()
    board.needs("power", "files")
    m = board.meter()
    upload(m, variant_images["slow_health"])
    m.activate("now", ack=ack)
    on_trial(m)
    board.power_off()
    slot_file_damaged(board)
    board.power_on()
    return board, m


SCENARIOS = {"crash": crash, "hang": hang, "health": health, "attempts": attempts, "verify": verify}


def assert_one_revert_alarm(meter, cause, report) -> dict:
    alarms = revert_alarms(meter)
    assert len(alarms) == 1, alarms
    a = alarms[0]
    assert a["name"] == "firmware reverted" and a["value"] == CAUSES.index(cause), a
    assert a["message"].startswith(f"1.1.0 reverted ({cause})"), a
    assert a["report"] == report, a
    return a


@pytest.mark.parametrize("cause", list(SCENARIOS))
def test_revert_pushes_one_alarm_at_once_with_ack_immediate(cause, make_board, variant_images):
    _, m = SCENARIOS[cause](make_board, variant_images, "immediate")
    st = wait_settled(m)
    assert st["update"]["image_id"] in st["rejected"]
    a = assert_one_revert_alarm(m, cause, "immediate")
    pushed = []
    deadline = time.monotonic() + 20
    while not pushed and time.monotonic() < deadline:
        pushed = [p for p in m.listen(1) if p["seq"] == a["seq"]]
    assert pushed and pushed[0]["code"] == FIRMWARE_REVERTED, "the revert's alarm was not pushed"
    assert [x for x in m.read_registers()["alarms"] if x["code"] == FIRMWARE_REVERTED] == []
    assert "reverted" in [e["name"] for e in m.read_events()]
    m.link.close()


# The ack option is read by one path whatever the cause: two causes (one at the first boot, one
# after a power cut) cover it without a meter per cause.
@pytest.mark.parametrize("cause", ["crash", "attempts"])
def test_revert_holds_one_alarm_for_the_next_read_with_ack_next_read(cause, make_board, variant_images):
    _, m = SCENARIOS[cause](make_board, variant_images, "next-read")
    wait_settled(m)
    a = assert_one_revert_alarm(m, cause, "next-read")
    held = [x for x in m.read_registers()["alarms"] if x["code"] == FIRMWARE_REVERTED]
    assert [x["seq"] for x in held] == [a["seq"]]           # it rides in the billing read
    assert [p for p in m.listen(3) if p["code"] == FIRMWARE_REVERTED] == []  # and is never pushed
    m.link.close()


# -- once per revert, through power cuts ----------------------------------------------------------

def test_a_power_cut_after_the_alarm_is_posted_does_not_post_it_again(make_board, variant_images):
    board, m = crash(make_board, variant_images, "immediate")
    wait_settled(m)
    first = assert_one_revert_alarm(m, "crash", "immediate")
    board.needs("power")
    board.power_cycle()                      # every later boot finds the revert's record again
    st = m.wait_until(lambda s: s.get("boot_reason") == "power-on" and s.get("health") is not None, 30)
    assert st is not None and st["update"]["result"] == "reverted"
    assert assert_one_revert_alarm(m, "crash", "immediate")["seq"] == first["seq"]
    m.link.close()


def _outbox_files(fs) -> dict:
    out = {}
    for path in ("/data/outbox", "/data/outbox.new"):
        try:
            with fs.open(path, "rb") as f:
                out[path] = f.read()
        except FileNotFoundError:
            out[path] = None
    return out


def test_a_power_cut_before_the_alarm_is_posted_does_not_lose_it(make_board, variant_images):
    # The crashing image posts nothing, so the outbox the reverting boot loads is the one from
    # before the activation: put back, it is the flash as a cut just before the post left it.
    board = make_board()
    board.needs("power", "files")
    m = board.meter()
    upload(m, variant_images["crash_at_import"])
    board.power_off()
    with mounted(board.dir / "flash.img", write=False) as fs:
        before = _outbox_files(fs)
    board.power_on()
    assert m.wait_until(lambda s: s.get("health") is not None, 30) is not None
    m.activate("now", ack="immediate")
    wait_settled(m)
    first = assert_one_revert_alarm(m, "crash", "immediate")

    board.power_off()
    with mounted(board.dir / "flash.img") as fs:
        assert _outbox_files(fs) != before  # the post is what the cut takes back
        for path, data in before.items():
            if data is None:
                if _outbox_files(fs)[path] is not None:
                    fs.remove(path)
            else:
                with fs.open(path, "wb") as f:
                    f.write(data)
    board.power_on()
    st = m.wait_until(lambda s: s.get("health") is not None, 30)
    assert st is not None and st["active_version"] == "1.0.0"
    assert assert_one_revert_alarm(m, "crash", "immediate")["seq"] == first["seq"]
    m.link.close()


# -- an operator's revert, and the reporting policy -------------------------------------------------

def test_an_operators_revert_is_logged_but_raises_no_alarm(make_board, variant_images):
    board = make_board()
    m = board.meter()
    upload(m, variant_images["slow_health"])
    m.activate("now", ack="immediate")
    on_trial(m)                               # still on trial: the operator calls it off
    m.revert()
    st = wait_settled(m)
    assert st["boot_reason"] == "revert" and st["rejected"] == []
    assert revert_alarms(m) == []
    assert "reverted" in [e["name"] for e in m.read_events()]
    m.link.close()


def test_without_an_ack_option_the_reporting_policy_decides(make_board, variant_images):
    # An activation that gave no ack option (the recovery console's, an older image's): the
    # meter state's policy decides. By default a revert is pushed at once; this meter's policy
    # holds it for the next read.
    board = make_board()
    board.needs("power", "files")
    m = board.meter()
    assert FIRMWARE_REVERTED in m.read_state()["reporting"]["immediate"]  # the factory policy
    m.set_state({"reporting": {"immediate": [148]}})
    assert m.read_state()["reporting"]["immediate"] == [148]
    upload(m, variant_images["crash_at_import"])
    act = m.activate("at", at_s=m.time_get()["time_ms"] // 1000 + 15)
    board.power_off()
    with mounted(board.dir / "flash.img") as fs:
        with fs.open("/data/update.json", "rb") as f:
            update = json.loads(f.read())
        assert update["activate_at_s"] == act["activate_at_s"]
        del update["ack"]
        with fs.open("/data/update.json", "wb") as f:
            f.write(json.dumps(update).encode())
    board.power_on()                          # the activation stays scheduled across the cut
    wait_settled(m)
    a = assert_one_revert_alarm(m, "crash", "next-read")
    assert [x["seq"] for x in m.read_registers()["alarms"] if x["code"] == FIRMWARE_REVERTED] == [a["seq"]]
    m.link.close()
