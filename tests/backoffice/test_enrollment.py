"""The back office's HAN enrollment registry (scenario 2: FR19-FR23, NFR2, BR5, BR6) over simulated
meters with a HAN radio on the rig's Zigbee-SE medium: an enrollment checked whole before
anything is stored or sent, pushed to its fleet meter, joined and tested there with no further
step, and its outcome, success or the meter's exact failure, in a customer notification record;
unenroll, a meter swap and a revoked consent each erase the key on the meter, and a meter that
cannot be reached leaves the enrollment removal_pending until a later run erases it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meterfw import enrollment as E
from meterfw import fleet
from meterfw.errors import CommandError
from meterfw.han import with_crc
from meterfw.keys import load_keys
from meterfw.session import Meter
from meterfw.store import Store
from meterfw.transport import Link

BIN = Path(sys.executable).parent
CODE = "83FED3407A939723A5C639B26916D505C3B5"  # Zigbee's example install code, CRC C3B5
OTHER_CODE = with_crc(bytes.fromhex("0102030405060708")).hex().upper()  # a valid code, not the device's
INTERVAL_S = 3


def start_meters(sim_factory, images, keys_dir, db, n, area="north"):
    boards = []
    for i in range(n):
        d = sim_factory.new_dir()
        (d / "sim.json").write_text(json.dumps({"han": "ok"}))
        boards.append(sim_factory(dir=d, image=images["v1"], keys=keys_dir, interval_s=INTERVAL_S, seed=30 + i,
                                  serial=f"EM{i}"))
    with Store(str(db)) as store:
        fleet.import_meters(store, fleet.parse_csv("serial,board,url,area\n" + "".join(
            f"EM{i},sim,{b.port},{area}\n" for i, b in enumerate(boards))))
        E.set_area(store, area, ["zigbee-se"], "test")
    return boards


def on_premises(board, eui, *flags, kind="thermostat", code=CODE):
    proc = subprocess.run([str(BIN / "meterfw-sim"), "han", "add", "--dir", str(board.dir), "--eui64", eui,
                           "--install-code", code, "--kind", kind, *flags, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def on_meter(board) -> dict:
    """The meter's own device table: {eui64: row}."""
    with Link(board.port, timeout_s=3) as link:
        return {d["eui64"]: d for d in Meter(link).han_table()["devices"]}


def mfw(*args):
    proc = subprocess.run([str(BIN / "meterfw"), *map(str, args), "--json"], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else None, proc.stderr


def enroll_cli(db, keys_dir, eui, *extra, meter="EM0", code=CODE, consent=("--consent", "yes")):
    return mfw("han", "enroll", "--db", db, "--keys", keys_dir, "--meter", meter, "--eui64", eui,
               "--install-code", code, "--kind", "thermostat", "--customer", "C1", "--contact", "ann@example.org",
               "--premises", "P1", "--address", "1 High St", "--program", "demand-response", "--window-s", 8,
               *consent, *extra)


def connect(store, keys_dir, timeout_s=3.0):
    return E.connector(store, load_keys(keys_dir, private=False).utility_secret, timeout_s)


def request(store, keys_dir, **kw):
    args = dict(meter="EM0", install_code=CODE, kind="thermostat", customer="C1", premises="P1",
                program="demand-response", consent="yes", contact="+44 7700 900123", window_s=8)
    return E.enroll(store, connect(store, keys_dir), **{**args, **kw})


def counts(db) -> tuple:
    with Store(str(db)) as s:
        return tuple(s.one(f"SELECT COUNT(*) FROM {t}")[0] for t in ("enrollments", "han_devices", "consents",
                                                                     "notifications"))


def test_enrollment_through_the_cli_and_every_refusal_before_anything(sim_factory, images, keys_dir, tmp_path):
    db = tmp_path / "office.db"
    (board,) = start_meters(sim_factory, images, keys_dir, db, 1)
    on_premises(board, "00124B0001A2C001")
    rc, e, err = enroll_cli(db, keys_dir, "00124B0001A2C001")
    assert rc == 0, err
    assert e["state"] == "enrolled" and e["ok"] and e["meter"] == "EM0"
    assert e["requested_s"] <= e["pushed_s"] <= e["outcome_s"] <= e["notified_s"]
    assert e["outcome"]["comm_test"] == "pass" and e["outcome"]["self_test"] == "pass"
    (told,) = e["notifications"]
    assert told["outcome"] == "success" and told["channel"] == "email"
    assert told["message"] == ("Your thermostat 00124B0001A2C001 is enrolled in demand-response at 1 High St: it "
                               "joined meter EM0 and passed its communication test and self-test.")
    assert on_meter(board)["00124B0001A2C001"]["state"] == "joined"

    before, table = counts(db), on_meter(board)
    mistyped = CODE[:-1] + "4"
    for args, said in (
            (dict(eui="00124B0001A2C002", code=mistyped), "fails its CRC"),
            (dict(eui="00124B0001A2C002", consent=()), "no consent from customer C1"),
            (dict(eui="00124B0001A2C002", consent=("--consent", "no")), "no consent from the customer (BR5)"),
            (dict(eui="00124B0001A2C002", extra=("--tech", "plc")), "plc is not a technology valid in service area north"),
            (dict(eui="00:12:4B:00:01:A2:C0:01"), "enrolled on this meter already"),
            (dict(eui="00124B0001A2C002", meter="EM9"), "no meter EM9 in the fleet"),
    ):
        extra = args.pop("extra", ())
        rc, _, err = enroll_cli(db, keys_dir, args.pop("eui"), *extra, **args)
        assert rc == 1 and said in err and err.count("\n") == 1, err
    assert counts(db) == before and on_meter(board) == table          # nothing stored, nothing pushed

    rc, out, err = mfw("han", "notifications", "--db", db, "--customer", "C1")
    assert rc == 0 and [n["outcome"] for n in out] == ["success"]
    rc, out, _ = mfw("han", "areas", "--db", db, "--set", "south", "--tech", "zigbee-se", "--tech", "plc")
    assert out == {"north": ["zigbee-se"], "south": ["plc", "zigbee-se"]}

    rc, e, err = mfw("han", "unenroll", "--db", db, "--keys", keys_dir, "--eui64", "00124B0001A2C001")
    assert rc == 0 and e["state"] == "removed", err
    assert "00124B0001A2C001" not in on_meter(board)                   # the key is gone from the meter
    rc, out, _ = mfw("han", "notifications", "--db", db, "--eui64", "00124B0001A2C001")
    assert out[-1]["message"].endswith("the meter no longer holds its key.")
    rc, out, _ = mfw("han", "audit", "--db", db)
    assert [r["action"] for r in out] == ["area", "consent granted", "enroll requested", "enrolled", "area", "removed"]


def test_each_failure_at_the_meter_is_the_customers_exact_message(sim_factory, images, keys_dir, tmp_path):
    db = tmp_path / "office.db"
    (board,) = start_meters(sim_factory, images, keys_dir, db, 1)
    on_premises(board, "00124B0001A2C010")
    on_premises(board, "00124B0001A2C011", "--silent")
    on_premises(board, "00124B0001A2C012", "--failing-self-test", kind="ev-charger")
    with Store(str(db)) as store:
        E.set_area(store, "north", ["zigbee-se", "plc"], "test")
        cases = (
            (dict(eui64="00124B0001A2C010", install_code=OTHER_CODE),
             "the device asked to join but did not take the key: is the install code the device's?"),
            (dict(eui64="00124B0001A2C0FF", window_s=2), "the device did not ask to join within the 2 s window"),
            (dict(eui64="00124B0001A2C011"), "comm test: 0 of 3 frames answered"),
            (dict(eui64="00124B0001A2C012", kind="ev-charger"), "self-test failed: ground-fault-monitor"),
            (dict(eui64="00124B0001A2C013", tech="plc"),
             "this meter has no driver for plc (it has new-tech, zigbee-se): join the device through a bridge to "
             "new-tech or zigbee-se, or fit a meter that supports plc"),
        )
        for kw, message in cases:
            e = request(store, keys_dir, **kw)
            assert e["state"] == "failed" and not e["ok"] and e["message"] == message, e
            (told,) = E.notifications(store, eui64=kw["eui64"])
            assert told["outcome"] == "failure" and told["channel"] == "sms"
            assert told["message"] == (f"Your {kw.get('kind', 'thermostat')} {kw['eui64']} could not be enrolled in "
                                       f"demand-response: {message}")
        assert on_meter(board) == {}                                  # a failed enrollment leaves no key there
        # Enrolled again with the right code, the first device joins: a failure blocks nothing.
        assert request(store, keys_dir, eui64="00124B0001A2C010")["state"] == "enrolled"


def test_meter_swap_moves_each_device_and_a_dead_old_meter_needs_retired(sim_factory, images, keys_dir, tmp_path):
    db = tmp_path / "office.db"
    old, new = start_meters(sim_factory, images, keys_dir, db, 2)
    for b in (old, new):
        on_premises(b, "00124B0001A2C020")                            # the same premises' device, heard by both
    with Store(str(db)) as store:
        assert request(store, keys_dir, eui64="00124B0001A2C020")["state"] == "enrolled"
        out = E.swap(store, connect(store, keys_dir), "EM0", "EM1", "test", window_s=8)
        (moved,) = out["enrollments"]
        assert moved["meter"] == "EM1" and moved["state"] == "enrolled" and not out["old_meter_retired"]
        assert "00124B0001A2C020" not in on_meter(old) and on_meter(new)["00124B0001A2C020"]["state"] == "joined"
        assert [e["state"] for e in E.enrollments(store, eui64="00124B0001A2C020")] == ["removed", "enrolled"]
        assert store.one("SELECT meter FROM premises WHERE id = 'P1'")[0] == "EM1"
        assert E.notifications(store, eui64="00124B0001A2C020")[-1]["message"].startswith(
            "Your thermostat 00124B0001A2C020 is enrolled in demand-response: it joined meter EM1")

        new.stop()                                                    # EM1 is out and cannot be reached
        with pytest.raises(CommandError, match="give --old-meter-retired"):
            E.swap(store, connect(store, keys_dir, 1.0), "EM1", "EM0", "test", window_s=8)
        assert [e["state"] for e in E.enrollments(store, eui64="00124B0001A2C020")] == ["removed", "enrolled"]
    rc, out, err = mfw("--timeout", 1, "han", "swap", "--db", db, "--keys", keys_dir, "--old-meter", "EM1",
                       "--new-meter", "EM0", "--old-meter-retired", "--window-s", 8)
    assert rc == 0 and out["old_meter_retired"] and out["enrollments"][0]["state"] == "enrolled", err
    assert on_meter(old)["00124B0001A2C020"]["state"] == "joined"
    with Store(str(db)) as store:
        retired = [r for r in E.audit_trail(store) if r["action"] == "old meter retired"]
        assert len(retired) == 1 and "00124B0001A2C020" in retired[0]["detail"] and retired[0]["meter"] == "EM1"


def test_revoked_consent_unenrolls_and_an_unreachable_meter_leaves_removal_pending_on_postgres(
        sim_factory, images, keys_dir, pg_url, tmp_path):
    d = sim_factory.new_dir()
    (d / "sim.json").write_text(json.dumps({"han": "ok"}))
    board = sim_factory(dir=d, image=images["v1"], keys=keys_dir, interval_s=INTERVAL_S, seed=40, serial="EM0")
    for eui in ("00124B0001A2C030", "00124B0001A2C031"):
        on_premises(board, eui)
    with Store(pg_url) as store:
        fleet.import_meters(store, fleet.parse_csv(f"serial,board,url,area\nEM0,sim,{board.port},north\n"))
        E.set_area(store, "north", ["zigbee-se"], "test")
        assert request(store, keys_dir, eui64="00124B0001A2C030")["state"] == "enrolled"
        assert request(store, keys_dir, eui64="00124B0001A2C031", program="in-home-display",
                       consent="ref CRM-4411")["state"] == "enrolled"
        with pytest.raises(CommandError, match="enrolled on this meter already"):
            request(store, keys_dir, eui64="00124B0001A2C031")

        out = E.revoke(store, "C1", None, "demand-response", "test", connect(store, keys_dir))
        assert [e["eui64"] for e in out["unenrolled"]] == ["00124B0001A2C030"]
        assert out["unenrolled"][0]["state"] == "removed"
        assert list(on_meter(board)) == ["00124B0001A2C031"]        # the key erased; the other device stays
        with pytest.raises(CommandError, match="no consent from customer C1"):  # and it is pushed nowhere again
            request(store, keys_dir, eui64="00124B0001A2C030", consent=None)

        board.power_off()
        e = E.unenroll(store, "00124B0001A2C031", "test", connect(store, keys_dir, 1.0))
        assert e["state"] == "removal_pending" and "not reached" in e["error"]
        board.power_on()
        assert "00124B0001A2C031" in on_meter(board)                  # still held: never called removed
        (done,) = E.complete_pending(store, "test", connect(store, keys_dir))
        assert done["state"] == "removed" and on_meter(board) == {}
