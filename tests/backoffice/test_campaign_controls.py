"""The campaign's controls, over load meters (hil/loadmeter.py: the meter's link protocol in
CPython, many per process) driven by the unchanged per-meter flow: success thresholds that stop
a campaign and ones that let it go on; the error threshold with its minimum executed, by count
and by percentage; pause and resume; approval between waves; maintenance windows and pricing
events; retries per failure kind; the per-meter timeout; and, on PostgreSQL, two worker
processes sharing one campaign with no meter upgraded twice."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil.loadmeter import LoadFleet, fleet_specs, serial_of
from meterfw import campaign as C
from meterfw import fleet as F
from meterfw.image import Image
from meterfw.keys import load_keys
from meterfw.session import Meter
from meterfw.store import Store
from meterfw.transport import Link

pytestmark = pytest.mark.timeout(240)
MFW = str(Path(sys.executable).parent / "meterfw")
FAST_BAUD = 1_000_000
INTERVAL_S = 2
ACTIVATED = 18  # DLMS: firmware activated


class Office:
    """A fleet of load meters in the inventory of a fresh database, and campaigns over them."""

    def __init__(self, fleet, url, images, keys_dir):
        self.fleet, self.url, self.images = fleet, url, images
        self.keys = load_keys(keys_dir, private=False)
        self.store = Store(url)
        F.import_meters(self.store, [F.FleetMeter(ep["serial"], ep["board"], ep["url"],
                                                  test_population=ep["serial"] == serial_of(1))
                                     for ep in fleet.endpoints])

    def create(self, name="c", image="v2", **policy) -> int:
        # Activation now rather than at the next 2-s boundary: the controls, not the boundary, are tested here.
        policy = {"waves": ("100%",), "min_executed": 1, "link_timeout_s": 2.0, "retry_after_s": 0.2, "when": "now",
                  **policy}
        return C.create(self.store, name, {"sim": (str(self.images[image]), Image.read(self.images[image]))},
                        F.Selection(), C.Policy(**policy), self.keys)

    def run(self, cid, **kw) -> dict:
        return C.Runner(self.store, cid, self.keys).run(poll_s=0.05, **kw)

    def states(self, cid) -> dict:
        return {m["serial"]: m["state"] for m in C.members(self.store, cid)}

    def version(self, serial) -> str:
        with Link(self.fleet.endpoints[int(serial[2:]) - 1]["url"], timeout_s=3) as link:
            return Meter(link).status()["active_version"]

    def activations(self, serial) -> int:
        with Link(self.fleet.endpoints[int(serial[2:]) - 1]["url"], timeout_s=3) as link:
            return sum(e["code"] == ACTIVATED for e in Meter(link).read_events())


@pytest.fixture
def office(request, images, keys_dir, tmp_path):
    """office(n, behaviours) -> an Office of n load meters (LM000001 in the test population)."""
    made = []

    def make(n, behaviours=None, url=None, baud=FAST_BAUD):
        fleet = LoadFleet(fleet_specs(n, images["v1"], behaviours=behaviours), keys_dir, baud=baud,
                          interval_s=INTERVAL_S, metered_s=10, reboot_s=0.3).__enter__()
        made.append(fleet)
        o = Office(fleet, url or str(tmp_path / "office.db"), images, keys_dir)
        made.append(o.store)
        return o

    yield make
    for thing in reversed(made):
        if isinstance(thing, Store):
            thing.close()
        else:
            thing.__exit__(None, None, None)


def test_a_wave_below_its_success_threshold_stops_the_campaign(office):
    o = office(4, {serial_of(2): "revert"})
    cid = o.create(waves=("2", "100%"), test_population=False, error_threshold=None, success_pct=100)
    s = o.run(cid)
    assert s["state"] == "aborted" and "wave 1 confirmed 50%" in s["reason"], s["reason"]
    assert o.states(cid) == {serial_of(1): "confirmed", serial_of(2): "reverted", serial_of(3): "skipped",
                             serial_of(4): "skipped"}
    assert [o.version(serial_of(i)) for i in (3, 4)] == ["1.0.0", "1.0.0"]


def test_a_wave_at_its_success_threshold_lets_the_next_one_start(office):
    o = office(5, {serial_of(3): "revert"})
    cid = o.create(waves=("2", "100%"), test_population=False, error_threshold=None, success_pct=50)
    s = o.run(cid)
    assert s["state"] == "completed" and s["totals"]["confirmed"] == 4 and s["totals"]["reverted"] == 1


def test_the_error_threshold_waits_for_its_minimum_then_aborts(office):
    o = office(6, {serial_of(1): "revert", serial_of(2): "crash"})
    cid = o.create(error_threshold="2", min_executed=4, success_pct=0, max_in_flight=1, test_population=False)
    s = o.run(cid)
    # Two failures came first, but the threshold could trip only once four meters had run.
    assert s["state"] == "aborted" and "2 of 4 meters failed" in s["reason"], s["reason"]
    assert list(o.states(cid).values()) == ["reverted", "reverted", "confirmed", "confirmed", "skipped", "skipped"]


def test_an_error_percentage_not_reached_trips_nothing(office):
    o = office(6, {serial_of(4): "reject"})
    cid = o.create(error_threshold="20%", min_executed=6, success_pct=50, max_in_flight=2)
    s = o.run(cid)
    assert s["state"] == "completed" and s["totals"]["rejected"] == 1 and s["totals"]["confirmed"] == 5


def test_pause_stops_new_meters_and_resume_goes_on(office):
    o = office(4)
    cid = o.create(max_in_flight=1, test_population=False)
    runner = C.Runner(o.store, cid, o.keys)

    def pause_after_the_first():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "confirmed" not in o.states(cid).values():
            time.sleep(0.05)
        C.set_state(o.store, cid, "pause")

    t = threading.Thread(target=pause_after_the_first)
    t.start()
    s = runner.run(poll_s=0.05)
    t.join()
    assert s["state"] == "paused"
    done = [k for k, v in o.states(cid).items() if v == "confirmed"]
    assert 1 <= len(done) <= 2 and all(o.version(k) == "1.0.0" for k, v in o.states(cid).items() if v == "pending")
    C.set_state(o.store, cid, "resume")
    assert o.run(cid)["state"] == "completed" and set(o.states(cid).values()) == {"confirmed"}


def test_an_abort_stops_a_meter_in_flight_before_its_switch_and_starts_no_other(office):
    o = office(3, baud=115200)  # a transfer of seconds, to abort in
    cid = o.create(max_in_flight=1, test_population=False)
    runner = C.Runner(o.store, cid, o.keys)
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(runner.run(poll_s=0.05)))
    t.start()
    stage = "SELECT stage FROM campaign_meters WHERE campaign_id = ? AND serial = ?"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and o.store.one(stage, (cid, serial_of(1)))[0] != "transfer":
        time.sleep(0.02)
    C.set_state(o.store, cid, "abort")
    t.join(120)
    assert done["state"] == "aborted" and o.states(cid) == {serial_of(i): "skipped" for i in (1, 2, 3)}
    reason = o.store.one(stage.replace("stage", "reason", 1), (cid, serial_of(1)))[0]
    assert "before this meter switched" in reason
    for i in (1, 2, 3):  # each runs what it ran, and was never switched
        assert o.version(serial_of(i)) == "1.0.0" and o.activations(serial_of(i)) == 0


def test_each_wave_waits_for_approval_when_asked(office):
    o = office(3)
    cid = o.create(waves=("1", "100%"), auto_advance=False)
    s = o.run(cid)
    assert [w["state"] for w in s["waves"]] == ["succeeded", "awaiting_approval", "pending"]
    assert o.states(cid) == {serial_of(1): "confirmed", serial_of(2): "pending", serial_of(3): "pending"}
    C.set_state(o.store, cid, "approve")
    assert [w["state"] for w in o.run(cid)["waves"]] == ["succeeded", "succeeded", "awaiting_approval"]
    C.set_state(o.store, cid, "approve")
    assert o.run(cid)["state"] == "completed"


def test_no_activation_outside_the_maintenance_window(office):
    o = office(2)
    now = int(time.time())
    cid = o.create(windows=(f"{now + 3600}/{now + 7200}",), test_population=False)
    s = o.run(cid, wait=False)  # what is left waits for the window
    assert s["state"] == "running" and set(o.states(cid).values()) == {"pending"}
    for serial in (serial_of(1), serial_of(2)):
        assert o.version(serial) == "1.0.0" and o.activations(serial) == 0
    rows = o.store.rows("SELECT not_before_s, report FROM campaign_meters WHERE campaign_id = ?", (cid,))
    assert all(nb == now + 3600 - (now + 3600) % 60 or nb >= now + 3600 for nb, _ in rows)
    assert all(json.loads(r)["result"] == "deferred" for _, r in rows)  # transferred and verified, then held


def test_no_activation_inside_a_pricing_event_even_inside_the_window(office):
    o = office(1)
    now = int(time.time())
    cid = o.create(windows=(f"{now - 60}/{now + 7200}",), pricing_events=((now - 60, now + 3600),))
    o.run(cid, wait=False)
    assert o.states(cid) == {serial_of(1): "pending"} and o.activations(serial_of(1)) == 0
    nb = o.store.one("SELECT not_before_s FROM campaign_meters WHERE campaign_id = ?", (cid,))[0]
    assert nb >= now + 3600  # its next chance is after the event


def test_a_window_that_is_open_lets_the_campaign_through(office):
    o = office(2)
    now = int(time.time())
    cid = o.create(windows=(f"{now - 60}/{now + 3600}",), pricing_events=((now + 4000, now + 5000),))
    assert o.run(cid)["state"] == "completed"


def test_retries_are_counted_per_failure_kind(office):
    o = office(2, {serial_of(1): "link_fault", serial_of(2): "link_fault"})
    cid = o.create("retried", retries={**C.DEFAULT_RETRIES, "link": 1}, test_population=False)
    s = o.run(cid)
    assert s["state"] == "completed" and s["totals"]["confirmed"] == 2
    rows = dict(o.store.rows("SELECT serial, attempts FROM campaign_meters WHERE campaign_id = ?", (cid,)))
    assert rows == {serial_of(1): 2, serial_of(2): 2}


def test_no_retry_for_a_kind_with_none_left(office):
    o = office(1, {serial_of(1): "link_fault"})
    cid = o.create(retries={**C.DEFAULT_RETRIES, "link": 0}, error_threshold=None, success_pct=0)
    s = o.run(cid)
    assert s["totals"]["link"] == 1 and o.states(cid) == {serial_of(1): "link"}


def test_a_meter_past_its_timeout_is_stopped_and_counted(office):
    o = office(2, {serial_of(1): "hang"})
    cid = o.create(meter_timeout_s=15, retries={**C.DEFAULT_RETRIES, "timeout": 0}, error_threshold=None,
                   success_pct=0, test_population=False)
    t0 = time.monotonic()
    s = o.run(cid)
    assert o.states(cid) == {serial_of(1): "timeout", serial_of(2): "confirmed"}
    assert s["state"] == "completed" and time.monotonic() - t0 < 45  # not the flow's own 57-s verdict wait
    assert threading.active_count() < 10  # the hung meter's thread ended with its shut link


def test_two_workers_on_postgres_share_a_campaign_and_upgrade_no_meter_twice(office, pg_url, keys_dir):
    o = office(12, url=pg_url)
    cid = o.create(max_in_flight=3, test_population=False, error_threshold=None)
    run = [MFW, "campaign", "run", str(cid), "--keys", str(keys_dir), "--db", pg_url, "--json"]
    workers = [subprocess.Popen(run + ["--worker", f"w{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in (1, 2)]
    outs = [w.communicate(timeout=200) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outs]
    assert json.loads(outs[0][0])["state"] == "completed"
    assert set(o.states(cid).values()) == {"confirmed"}
    for ep in o.fleet.endpoints:
        assert o.activations(ep["serial"]) == 1, ep["serial"]  # each meter switched exactly once
    by = dict(o.store.rows("SELECT worker, COUNT(*) FROM campaign_meters WHERE campaign_id = ? GROUP BY worker",
                           (cid,)))
    assert set(by) == {"w1", "w2"} and sum(by.values()) == 12, by  # both worked, together once over the fleet
