"""The load meter (hil/loadmeter.py) driven by the host's unchanged code: Link, Meter and
upgrade() over socket:// find the replies, the transfer, the verdicts and the metering a real
meter gives, each behaviour gives the verdict it names, and a fleet starts and stops whole."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hil.loadmeter import LoadFleet, fleet_specs
from meterfw import delta as D
from meterfw import protocol as P
from meterfw.auth import AuthSession, meter_key
from meterfw.errors import CommandError, TransportError
from meterfw.image import Image
from meterfw.keys import load_keys
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity, energy_check, upgrade

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
INTERVAL_S = 2
FAST_BAUD = 1_000_000  # a 42 KB transfer in about a second
METERED_S = 50  # the fleet's meters have metered this long: more intervals than one page holds
BEHAVIOURS = {"LM000003": "revert", "LM000004": "crash", "LM000005": "reject", "LM000006": "link_fault",
              "LM000007": "hang"}


@pytest.fixture(scope="module")
def fleet(images, keys_dir):
    """Nine meters on 1.0.0: LM000001, 2, 8 and 9 good, the others as BEHAVIOURS says."""
    with LoadFleet(fleet_specs(9, images["v1"], behaviours=BEHAVIOURS), keys_dir, baud=FAST_BAUD,
                   interval_s=INTERVAL_S, metered_s=METERED_S) as f:
        yield f


@pytest.fixture(scope="module")
def secret(keys_dir):
    return load_keys(keys_dir, private=False).utility_secret


@pytest.fixture(scope="module")
def v2(images):
    return Image.read(images["v2"])


@pytest.fixture
def connect(fleet, secret):
    """connect(serial) -> a Meter on that load meter's endpoint; closed after the test."""
    links = []
    urls = {ep["serial"]: ep["url"] for ep in fleet.endpoints}

    def make(serial, key=secret):
        links.append(Link(urls[serial]))
        return Meter(links[-1], utility_secret=key)

    yield make
    for link in links:
        link.close()


def wait_for(fn, what, timeout_s=30):
    """fn()'s first true value; the deadline only stops a test whose meter never gets there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"the meter never {what}")


def test_the_hosts_reads_pass_its_reply_checks_and_the_intervals_conserve_energy(connect):
    m = connect("LM000001")
    st = m.status()  # every read below is checked against what the host reads of it (reply.py)
    assert (st["serial"], st["board"], st["active_version"], st["confirmed"]) == ("LM000001", "sim", "1.0.0", True)
    assert st["interval_s"] == INTERVAL_S and st["update"]["status"] == 0 and st["link_faults"] == 0
    assert st["health"] and all(h["ok"] for h in st["health"])
    records = m.read_intervals()
    assert len(records) >= METERED_S // INTERVAL_S - 1 > 20  # read over two pages at least
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert continuity(records) == {"intervals_missed": 0, "intervals_duplicated": 0}
    assert energy_check(records, 0)["energy_conserved"]
    assert all(b["register_mwh"] - a["register_mwh"] == b["energy_mwh"] > 0 for a, b in zip(records, records[1:]))
    assert records[0]["flags"] == ["partial"] and all(r["flags"] == [] for r in records[1:])
    assert m.read_registers()["delivered_mwh"] >= records[-1]["register_mwh"]
    assert [e["name"] for e in m.read_events()] == ["boot", "health check passed"]
    state = m.read_state()
    assert state["hash"] == st["state_hash"] and state["relay"]["latched"] == "connected"
    health = m.health()
    assert health["ok"] and [i["check"] for i in health["items"]][:3] == ["metrology", "clock", "storage"]
    assert m.time_get()["valid"] is True
    assert m.read_alarms() == [] and m.update_state()["status"] == 0
    with pytest.raises(CommandError) as e:
        m.link.request(0x77)
    assert e.value.code == "unknown_command"


def test_privileged_requests_need_the_meters_own_key_and_a_fresh_counter(connect, secret):
    with pytest.raises(CommandError) as e:
        connect("LM000001", key=bytes(32)).notice({"version": "1.1.0"})
    assert e.value.code == "auth_failed"
    link = connect("LM000001").link
    with pytest.raises(CommandError) as e:
        link.request(P.UPD_NOTICE, b"{}")  # no session trailer at all
    assert e.value.code == "auth_required"
    body = json.dumps({"version": "1.1.0"}).encode()
    # The key derives from the utility secret and the serial, as the host derives it.
    auth = AuthSession(meter_key(secret, "LM000001"), bytes.fromhex(link.request_json(P.AUTH_CHALLENGE)["nonce"]))
    sealed = auth.seal(P.UPD_NOTICE, body)
    assert link.request_json(P.UPD_NOTICE, raw=sealed, opener=auth.opener(P.UPD_NOTICE, sealed))["noted"] is True
    with pytest.raises(CommandError) as e:
        link.request(P.UPD_NOTICE, sealed, opener=auth.opener(P.UPD_NOTICE, sealed))  # the same request again
    assert e.value.code == "replay"


def test_an_image_the_meter_cannot_take_is_refused_with_the_devices_codes(connect, images):
    m = connect("LM000001")
    for image, code in ((images["other"], "wrong_board"), (images["v1"], "already_active")):
        with pytest.raises(CommandError) as e:
            m.initiate(Image.read(image).head)
        assert e.value.code == code
    assert m.update_state()["status"] == 0


def test_an_upgrade_at_the_boundary_confirms_with_nothing_lost(connect, v2):
    m = connect("LM000002")
    report = upgrade(m, v2)  # at the next interval boundary, the default
    assert report["result"] == "confirmed", report
    assert report["discrepancies"] == [] and report["intervals_missed"] == 0 and report["energy_conserved"]
    st = m.status()
    assert (st["active_version"], st["confirmed"], st["update"]["result"]) == ("1.1.0", True, "confirmed")
    assert st["boot_reason"] == "activate" and st["slots"]["a"]["version"] == "1.0.0" and st["can_revert"]
    flagged = wait_for(lambda: [r for r in m.read_intervals() if "firmware-change" in r["flags"]],
                       "closed the interval it rebooted in")
    assert len(flagged) == 1 and flagged[0]["start"] >= report["activate_at_s"]


def test_a_failed_health_check_reverts_rejects_the_image_and_raises_an_alarm(connect, v2):
    m = connect("LM000003")
    report = upgrade(m, v2, when="now")
    assert report["result"] == "reverted", report
    assert report["reason"].startswith("critical health check failed")
    assert report["discrepancies"] == [] and report["intervals_missed"] == 0 and report["energy_conserved"]
    st = m.status()
    assert (st["active_version"], st["boot_reason"], st["update"]["result"]) == ("1.0.0", "revert", "reverted")
    assert st["rejected"] == [v2.image_id.hex()]
    alarms = m.read_alarms()
    assert [a["name"] for a in alarms] == ["critical health check failed"]
    assert [a["seq"] for a in m.pushed_alarms()] == [alarms[0]["seq"]]  # pushed to the host as well
    assert m.ack_alarms([alarms[0]["seq"]])["acknowledged"] == 1 and m.read_alarms() == []
    with pytest.raises(CommandError) as e:
        m.initiate(v2.head)
    assert e.value.code == "rejected"


def test_revert_after_crash_at_import(connect, v2):
    m = connect("LM000004")
    report = upgrade(m, v2, when="now")
    assert report["result"] == "reverted" and "crash at import" in report["reason"], report
    assert report["discrepancies"] == [] and report["energy_conserved"]
    assert m.status()["active_version"] == "1.0.0"
    assert "application crashed" in [e["name"] for e in m.read_events()]


def test_an_image_refused_at_verify_leaves_the_meter_as_it_was(connect, v2):
    m = connect("LM000005")
    report = upgrade(m, v2, when="now")
    assert report["result"] == "rejected" and "verification failed" in report["reason"], report
    st = m.status()
    assert (st["active_version"], st["boot_reason"], st["update"]["result"]) == ("1.0.0", "power-on", "rejected")


def test_a_link_dropped_mid_transfer_resumes_from_the_blocks_in_flash(connect, v2):
    m = connect("LM000006")
    with pytest.raises(TransportError):
        upgrade(m, v2, when="now")
    m.link.reopen()  # as a campaign retries a meter whose line dropped
    report = upgrade(m, v2, when="now")
    assert report["result"] == "confirmed", report
    assert report["resumed_from_block"] > 0 and report["discrepancies"] == []


def test_a_hanging_image_stays_on_trial_until_an_operator_reverts(fleet, connect, v2):
    hang, good = connect("LM000007"), connect("LM000008")
    for m in (hang, good):
        m.upload(v2)
        m.verify()
    hang.activate("now")
    good.activate("now")
    trial = hang.wait_until(lambda s: s["active_version"] == "1.1.0", 30)
    assert trial is not None and trial["boot_reason"] == "activate"
    assert good.wait_until(lambda s: s["update"]["result"] == "confirmed", 30) is not None
    st = hang.status()  # activated first, and still no verdict
    assert st["trial"] is True and st["update"]["result"] == "trial" and st["health"] is None
    hang.revert()
    st = hang.wait_until(lambda s: s["update"]["result"] == "reverted", 30)
    assert st is not None and (st["active_version"], st["confirmed"]) == ("1.0.0", True)
    # Both meters received the same image: its bytes are held once.
    assert fleet.meter("LM000007").slot_bytes("b") is fleet.meter("LM000008").slot_bytes("b") is not None


def test_a_delta_upgrade_makes_the_full_images_slot(fleet, connect, images, v2):
    m = connect("LM000009")
    report = upgrade(m, v2, deltas=[D.build(Image.read(images["v1"]), v2)], delta="only", when="now")
    assert report["result"] == "confirmed" and report["method"] == "delta", report
    assert report["bytes_on_wire"] < D.full_wire_bytes(v2) / 5 and report["discrepancies"] == []
    assert fleet.meter("LM000009").slot_bytes("b") == v2.data


def _sockets() -> set:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.add(fd)
        except OSError:
            pass  # the listing's own descriptor, gone already
    return out


def _status_serial(url: str) -> str:
    with Link(url) as link:
        return link.request_json(P.STATUS)["serial"]


def test_a_fleet_of_200_answers_status_and_stops_with_no_thread_or_socket_left(images, keys_dir):
    threads, sockets = set(threading.enumerate()), _sockets()
    with LoadFleet(fleet_specs(200, images["v1"]), keys_dir, baud=10_000_000) as fleet:
        endpoints = fleet.endpoints
        assert [e["serial"] for e in endpoints] == [f"LM{n:06d}" for n in range(1, 201)]
        # Many hosts at once (and pyserial's socket close waits 0.3 s): a pool asks them all.
        with ThreadPoolExecutor(max_workers=25) as pool:
            serials = list(pool.map(_status_serial, [e["url"] for e in endpoints]))
        assert serials == [e["serial"] for e in endpoints]
        first = fleet.meter("LM000001").slot_bytes("a")
        assert all(fleet.meter(e["serial"]).slot_bytes("a") is first for e in endpoints)
    assert set(threading.enumerate()) == threads and _sockets() == sockets
    with pytest.raises(TransportError):
        Link(endpoints[0]["url"])


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "hil.loadmeter", *map(str, args)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_the_command_line_serves_a_fleet_until_sigterm(tmp_path, images, keys_dir):
    ports = tmp_path / "ports.json"
    proc = _cli("--count", 3, "--image", images["v1"], "--keys", keys_dir, "--baud", FAST_BAUD, "--interval-s",
                INTERVAL_S, "--behaviour", "LM000002=revert", "--ports-file", ports)
    try:
        wait_for(lambda: ports.exists() or proc.poll() is not None, "wrote its ports file")
        assert proc.poll() is None, proc.stderr.read()
        endpoints = json.loads(ports.read_text())
        assert [(e["serial"], e["board"], e["behaviour"]) for e in endpoints] == [
            ("LM000001", "sim", "good"), ("LM000002", "sim", "revert"), ("LM000003", "sim", "good")]
        with Link(endpoints[1]["url"]) as link:
            assert link.request_json(P.STATUS)["serial"] == "LM000002"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not ports.exists()  # its ports answer no more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_command_line_refuses_a_meter_the_fleet_does_not_have_in_one_line(tmp_path, images, keys_dir):
    proc = _cli("--count", 2, "--image", images["v1"], "--keys", keys_dir, "--behaviour", "LM000009=revert",
                "--ports-file", tmp_path / "ports.json")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 64
    assert err.splitlines() == ["loadmeter: no meter LM000009 in a fleet of 2 (LM000001 to LM000002)"]
    assert not (tmp_path / "ports.json").exists()
