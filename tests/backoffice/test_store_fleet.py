"""The back office's database and fleet inventory, on SQLite and on a real PostgreSQL server:
migrations, CSV import with every bad row refused whole, selection, wave planning, windows, and
two workers claiming meters concurrently with none claimed twice."""
import threading
import time

import pytest

from meterfw import campaign as C
from meterfw import fleet
from meterfw.errors import CommandError
from meterfw.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError

CSV = """serial,board,url,area,tags,test_population
M1,sim,socket://127.0.0.1:1,north,a;b,yes
M2,sim,socket://127.0.0.1:2,north,a,no
M3,pico,socket://127.0.0.1:3,south,b,
M4,sim,socket://127.0.0.1:4,south,,no
"""


def test_a_new_database_gets_every_migration_once(db_url):
    with Store(db_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.migrate() == 0
    with Store(db_url) as s:  # opened again: nothing applied twice
        assert s.rows("SELECT version FROM schema_migrations") == [(v,) for v, _, _ in MIGRATIONS]


def test_a_database_from_a_newer_meterfw_is_refused(tmp_path):
    url = str(tmp_path / "new.db")
    with Store(url) as s:
        s.x("INSERT INTO schema_migrations (version, applied_s, what) VALUES (?, 0, 'future')", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="upgrade meterfw"):
        Store(url)


def test_a_database_in_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no folder"):
        Store(str(tmp_path / "nowhere" / "x.db"))


def test_an_unreachable_postgres_is_one_clear_error_without_the_password():
    with pytest.raises(StoreError) as e:
        Store("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2")
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_fleet_import_and_selection(db_url):
    with Store(db_url) as s:
        assert fleet.import_meters(s, fleet.parse_csv(CSV)) == {"added": 4, "updated": 0, "meters": 4}
        assert fleet.import_meters(s, fleet.parse_csv(CSV))["updated"] == 4
        all_ = fleet.meters(s)
        assert [m.serial for m in all_] == ["M1", "M2", "M3", "M4"]
        assert all_[0].tags == ("a", "b") and all_[0].test_population and not all_[2].test_population
        pick = lambda **kw: [m.serial for m in fleet.meters(s, fleet.Selection(**kw))]  # noqa: E731
        assert pick(boards=("sim",)) == ["M1", "M2", "M4"]
        assert pick(areas=("south",), boards=("sim",)) == ["M4"]
        assert pick(tags=("a", "b")) == ["M1"]
        assert pick(tags=("b",)) == ["M1", "M3"]


@pytest.mark.parametrize("text, message", [
    ("serial,board\nM1,sim\n", "must name serial, board and url"),
    ("serial,board,url,colour\nM1,sim,x,red\n", "unknown column"),
    ("serial,board,url\nM1,sim,x\nM1,sim,y\n", "line 3: serial M1 is listed twice"),
    ("serial,board,url\nM1,vax,x\n", "line 2: board 'vax'"),
    ("serial,board,url\nM1,sim,\n", "line 2: no url"),
    ("serial,board,url\n,sim,x\n", "line 2: no serial"),
    ("serial,board,url,test_population\nM1,sim,x,maybe\n", "test_population takes yes or no"),
    ("serial,board,url\nM1,sim,x,extra\n", "more fields than the header"),
])
def test_a_bad_csv_is_refused_whole_with_its_line(tmp_path, text, message):
    with Store(str(tmp_path / "f.db")) as s:
        fleet.import_meters(s, fleet.parse_csv(CSV))
        with pytest.raises(CommandError, match=message):
            fleet.import_meters(s, fleet.parse_csv(text))
        assert len(fleet.meters(s)) == 4


def _members(n: int, test: int = 0):
    return [fleet.FleetMeter(f"M{i:03}", "sim", "x", test_population=i < test) for i in range(n)]


def test_waves_take_the_test_population_first_then_grow():
    waves = C.plan_waves(_members(22, test=2), C.Policy(waves=("10%", "50%", "100%")))
    assert [(name, len(s)) for name, s in waves] == [("test population", 2), ("wave 1", 2), ("wave 2", 9),
                                                     ("wave 3", 9)]
    assert sorted(sum((s for _, s in waves), [])) == [m.serial for m in _members(22)]


def test_without_a_test_population_the_waves_start_at_one():
    waves = C.plan_waves(_members(5, test=2), C.Policy(waves=("1", "100%"), test_population=False))
    assert [(name, len(s)) for name, s in waves] == [("wave 1", 1), ("wave 2", 4)]


@pytest.mark.parametrize("policy, message", [
    (C.Policy(waves=("0",)), "a wave takes a count"),
    (C.Policy(error_threshold="150%"), "--error-threshold takes"),
    (C.Policy(windows=("25:00-26:00",)), "a window is"),
    (C.Policy(retries={"gremlins": 1}), "no failure kind"),
    (C.Policy(success_pct=120), "--success-pct"),
])
def test_bad_controls_are_refused(policy, message):
    with pytest.raises(CommandError, match=message):
        policy.check()


def test_windows_daily_and_once_and_pricing_events():
    day = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight
    assert C.in_windows(("01:00-05:00",), day + 2 * 3600)
    assert not C.in_windows(("01:00-05:00",), day + 6 * 3600)
    assert C.in_windows(("22:00-02:00",), day + 3600) and C.in_windows(("22:00-02:00",), day + 23 * 3600)
    assert C.in_windows((f"{day}/{day + 60}",), day + 30) and not C.in_windows((f"{day}/{day + 60}",), day + 60)
    assert C.in_windows((), day)
    # The next chance skips a pricing event inside the window.
    t = C.next_opening(("01:00-05:00",), [(day + 3600, day + 2 * 3600)], day)
    assert t == day + 2 * 3600


def test_two_workers_claiming_at_once_never_claim_a_meter_twice(db_url):
    n = 60
    with Store(db_url) as s:
        fleet.import_meters(s, [fleet.FleetMeter(f"M{i:03}", "sim", f"socket://127.0.0.1:{i + 1}") for i in range(n)])
        cid = C._insert(s, "claims", "upgrade", None, {}, {}, C.Policy(), [("wave 1", [f"M{i:03}" for i in range(n)])])
    claimed: dict[str, list] = {"a": [], "b": []}

    def worker(name):
        with Store(db_url) as s:
            r = C.Runner.__new__(C.Runner)  # only its claim: no images, no meters
            r.store, r.cid, r.worker = s, cid, name
            while True:
                got = r._claim(0, 3)
                if not got:
                    return
                claimed[name] += got
                time.sleep(0.001)  # let the other worker in

    threads = [threading.Thread(target=worker, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = claimed["a"] + claimed["b"]
    assert sorted(both) == [f"M{i:03}" for i in range(n)]  # each exactly once
