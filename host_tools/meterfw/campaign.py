"""Fleet campaigns (the meter management system, use case I3 scenario 1): one signed image (or one
per board) for a selection of the fleet, run in waves: the utility's test population first (BR4),
then growing waves. Each meter goes through the same flow `meterfw upgrade` runs (upgrade.py);
the campaign adds the controls around it: success and error thresholds, approval between waves,
pause and resume, abort, a timeout and retries per meter, a cap on meters in flight, maintenance
windows and pricing events (FR30), and rollback of what it upgraded.

Its state lives in the database (store.py), so a campaign survives its own crash: a meter whose
worker died goes back to the queue, and its next run takes it from where the meter is (a transfer
resumes at the meter's next block; a meter that already switched is taken from its verdict)."""
from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import fleet, mdms
from .errors import CommandError, MeterfwError, TransportError
from .image import Image, verify_image
from .keys import Keys
from .store import Store, dumps, loads
from .upgrade import parse_time, revert, upgrade

FIELD_BOARDS = ("pico", "pico2")  # boards meant for the field: approval required
FAILURE_KINDS = ("reverted", "rejected", "failed", "timeout", "link", "error")
FINAL = ("confirmed", "warned", "reverted", "rejected", "failed", "timeout", "link", "error", "skipped")
DEFAULT_RETRIES = {"link": 2, "timeout": 1, "failed": 1, "error": 0, "rejected": 0, "reverted": 0}


@dataclass
class Policy:
    """A campaign's controls. Waves are sizes after the test population, as counts or percentages
    of the meters left; the last wave takes every meter still left."""
    waves: tuple = ("10%", "50%", "100%")
    test_population: bool = True
    success_pct: float = 95.0
    auto_advance: bool = True
    error_threshold: str | None = "10%"
    min_executed: int = 5
    max_in_flight: int = 8
    meter_timeout_s: float = 900.0
    retries: dict = field(default_factory=lambda: dict(DEFAULT_RETRIES))
    windows: tuple = ()
    pricing_events: tuple = ()
    when: str = "boundary"
    ack: str = "next-read"
    registers: str = "preserve"
    delta: str = "auto"
    lease_s: float = 30.0
    link_timeout_s: float = 3.0
    retry_after_s: float = 5.0

    def check(self) -> "Policy":
        for w in self.waves:
            _wave_size(w, 1)
        if self.error_threshold is not None:
            _threshold(self.error_threshold)
        if not 0 <= self.success_pct <= 100:
            raise CommandError(f"--success-pct takes 0 to 100, not {self.success_pct}")
        if self.max_in_flight < 1 or self.min_executed < 0 or self.meter_timeout_s <= 0:
            raise CommandError("--max-in-flight must be at least 1, --min-executed 0 or more, --meter-timeout above 0")
        for w in self.windows:
            parse_window(w)
        for kind in self.retries:
            if kind not in FAILURE_KINDS:
                raise CommandError(f"--retries: no failure kind {kind!r}; kinds are {', '.join(FAILURE_KINDS)}")
        if self.when not in ("now", "boundary"):
            raise CommandError("a campaign activates at the boundary or now; windows choose the time")
        return self


# --- parsing the controls -------------------------------------------------------------------------

def _count_or_pct(text: str, what: str) -> tuple[str, float]:
    """("count", n) for a count from 1, ("pct", p) for a percentage above 0 up to 100%."""
    t = str(text).strip()
    try:
        v = float(t[:-1]) if t.endswith("%") else int(t)
    except ValueError:
        v = 0
    if not (0 < v <= 100 if t.endswith("%") else v >= 1):
        raise CommandError(f"{what} takes a count from 1 or a percentage up to 100%, not {text!r}")
    return ("pct" if t.endswith("%") else "count"), v


def _wave_size(text: str, left: int) -> int:
    kind, v = _count_or_pct(text, "a wave")
    if kind == "count":
        return min(int(v), left)
    return max(1, math.ceil(left * v / 100)) if left else 0


def _threshold(text: str) -> tuple[str, float]:
    return _count_or_pct(text, "--error-threshold")


def parse_retries(items: list[str]) -> dict:
    out = dict(DEFAULT_RETRIES)
    for item in items:
        kind, eq, n = item.partition("=")
        if not eq or kind not in FAILURE_KINDS or not n.isdigit():
            raise CommandError(f"--retries takes KIND=N with KIND one of {', '.join(FAILURE_KINDS)}, not {item!r}")
        out[kind] = int(n)
    return out


def parse_window(text: str):
    """`HH:MM-HH:MM` every day (UTC; may wrap midnight), or `START/END` once (epoch seconds or
    ISO-8601). Returns ("daily", start_min, end_min) or ("once", start_s, end_s)."""
    if "/" in text:
        a, _, b = text.partition("/")
        start, end = parse_time(a, "a window's start"), parse_time(b, "a window's end")
        if end <= start:
            raise CommandError(f"window {text!r} ends before it starts")
        return "once", start, end
    try:
        a, b = text.split("-")
        ha, ma = (int(x) for x in a.split(":"))
        hb, mb = (int(x) for x in b.split(":"))
        if not (0 <= ha < 24 and 0 <= hb <= 24 and 0 <= ma < 60 and 0 <= mb < 60):
            raise ValueError
    except ValueError:
        raise CommandError(f"a window is HH:MM-HH:MM (UTC, daily) or START/END, not {text!r}") from None
    return "daily", ha * 60 + ma, hb * 60 + mb


def parse_event(text: str) -> tuple[int, int]:
    a, sep, b = text.partition("/")
    if not sep:
        raise CommandError(f"a pricing event is START/END (epoch seconds or ISO-8601), not {text!r}")
    start, end = parse_time(a, "a pricing event's start"), parse_time(b, "a pricing event's end")
    if end <= start:
        raise CommandError(f"pricing event {text!r} ends before it starts")
    return start, end


def in_windows(windows, t: float) -> bool:
    if not windows:
        return True
    for w in map(parse_window, windows):
        if w[0] == "once":
            if w[1] <= t < w[2]:
                return True
            continue
        minute = int(t // 60) % 1440
        start, end = w[1], w[2]
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return False


def next_opening(windows, events, t: float, horizon_s: float = 8 * 86400) -> float | None:
    """The first minute from t on inside a window and outside every pricing event (None: none
    within the horizon)."""
    step = 60
    s = t
    while s < t + horizon_s:
        blocking = [e for e in events if e[0] <= s < e[1]]
        if blocking:
            s = max(e[1] for e in blocking)
            continue
        if in_windows(windows, s):
            return s
        s = (s // step + 1) * step
    return None


# --- creating a campaign ----------------------------------------------------------------------------

def check_image(img: Image, keys: Keys, require_approval: bool) -> None:
    """The vendor's signature always; the utility's approval (step 3, BR3) where required."""
    problems = verify_image(img, keys.vendor_public_raw, keys.utility_public_raw, require_approval=require_approval)
    if problems:
        raise CommandError(f"image {img.manifest['version']} for {img.manifest['board']}: {'; '.join(problems)}")


def plan_waves(members: list[fleet.FleetMeter], policy: Policy) -> list[tuple[str, list[str]]]:
    """[(wave name, serials)]: the test population first (when asked and any is selected), then
    the waves' sizes over the rest, the last wave taking what is left."""
    waves = []
    test = [m.serial for m in members if m.test_population] if policy.test_population else []
    if test:
        waves.append(("test population", test))
    rest = [m.serial for m in members if m.serial not in set(test)]
    for i, size in enumerate(policy.waves):
        if not rest:
            break
        last = i == len(policy.waves) - 1
        n = len(rest) if last else _wave_size(size, len(rest))
        waves.append((f"wave {len(waves) + (0 if test else 1)}", rest[:n]))
        rest = rest[n:]
    return waves


def create(store: Store, name: str, images: dict[str, tuple[str, Image]], selection: fleet.Selection,
           policy: Policy, keys: Keys, *, require_approval: bool | None = None) -> int:
    """A new campaign (state `running`) over the selected meters whose board it has an image
    for. images: board -> (path, image). Refused, nothing stored, when a name is taken, an image
    fails its checks, or nothing is selected."""
    policy.check()
    if store.one("SELECT id FROM campaigns WHERE name = ?", (name,)):
        raise CommandError(f"a campaign named {name!r} exists already")
    for board, (_, img) in images.items():
        check_image(img, keys, True if require_approval is None else require_approval or board in FIELD_BOARDS)
    members = [m for m in fleet.meters(store, selection) if m.board in images]
    if not members:
        raise CommandError("no meter in the fleet matches the selection and a board the campaign has an image for")
    waves = plan_waves(members, policy)
    return _insert(store, name, "upgrade", None, {b: {"path": str(Path(p).resolve()), "version": i.manifest["version"],
                                                       "image_id": i.image_id.hex()} for b, (p, i) in images.items()},
                   selection.as_dict(), policy, waves)


def create_rollback(store: Store, parent_name: str, name: str | None = None, policy: Policy | None = None) -> int:
    """A campaign that reverts every meter the parent confirmed, in the parent's waves, with the
    parent's controls (or those given)."""
    parent = load(store, parent_name)
    name = name or f"{parent['name']}-rollback"
    if store.one("SELECT id FROM campaigns WHERE name = ?", (name,)):
        raise CommandError(f"a campaign named {name!r} exists already")
    rows = store.rows("SELECT serial, wave, from_version FROM campaign_meters WHERE campaign_id = ? AND "
                      "state IN ('confirmed', 'warned') ORDER BY wave, serial", (parent["id"],))
    if not rows:
        raise CommandError(f"campaign {parent['name']} confirmed no meter: nothing to roll back")
    policy = (policy or Policy(**_policy_dict(parent["policy"]))).check()
    by_wave: dict[int, list[str]] = {}
    for serial, wave, _ in rows:
        by_wave.setdefault(wave, []).append(serial)
    names = {w["idx"]: w["name"] for w in parent["waves"]}
    cid = _insert(store, name, "rollback", parent["id"], parent["images"], parent["selection"], policy,
                  [(names[w], serials) for w, serials in sorted(by_wave.items())])
    store.many("UPDATE campaign_meters SET to_version = ? WHERE campaign_id = ? AND serial = ?",
               [(from_version, cid, serial) for serial, _, from_version in rows])
    return cid


def _policy_dict(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _insert(store, name, kind, parent_id, images, selection, policy, waves) -> int:
    now = time.time()
    inventory = {m.serial: m for m in fleet.meters(store)}

    def target(serial: str) -> str | None:  # an upgrade's version; a rollback's is set by its maker
        return images.get(inventory[serial].board, {}).get("version") if kind == "upgrade" else None

    with store.tx():
        cid = store.one("INSERT INTO campaigns (name, kind, parent_id, state, images, selection, policy, created_s, "
                        "updated_s) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?) RETURNING id",
                        (name, kind, parent_id, dumps(images), dumps(selection), dumps(asdict(policy)), now, now))[0]
        store.many("INSERT INTO waves (campaign_id, idx, name, state, size) VALUES (?, ?, ?, 'pending', ?)",
                   [(cid, i, wname, len(serials)) for i, (wname, serials) in enumerate(waves)])
        store.many("INSERT INTO campaign_meters (campaign_id, serial, wave, state, from_version, to_version) "
                   "VALUES (?, ?, ?, 'pending', ?, ?)",
                   [(cid, s, i, inventory[s].version, target(s)) for i, (_, serials) in enumerate(waves)
                    for s in serials])
        _log(store, cid, None, "created", f"{kind} campaign over {sum(len(s) for _, s in waves)} meters "
                                          f"in {len(waves)} waves")
    return cid


def _log(store: Store, cid: int, serial: str | None, kind: str, message: str) -> None:
    store.x("INSERT INTO campaign_log (campaign_id, time_s, serial, kind, message) VALUES (?, ?, ?, ?, ?)",
            (cid, time.time(), serial, kind, message))


# --- reading a campaign -------------------------------------------------------------------------------

def load(store: Store, name_or_id) -> dict:
    r = store.one("SELECT id, name, kind, parent_id, state, reason, images, selection, policy, created_s, updated_s "
                  "FROM campaigns WHERE name = ? OR CAST(id AS TEXT) = ?", (str(name_or_id), str(name_or_id)))
    if r is None:
        raise CommandError(f"no campaign {name_or_id!r}")
    c = dict(zip(("id", "name", "kind", "parent_id", "state", "reason", "images", "selection", "policy",
                  "created_s", "updated_s"), r))
    for k in ("images", "selection", "policy"):
        c[k] = loads(c[k])
    c["waves"] = [dict(zip(("idx", "name", "state", "size", "approved", "started_s", "ended_s"), w)) for w in
                  store.rows("SELECT idx, name, state, size, approved, started_s, ended_s FROM waves "
                             "WHERE campaign_id = ? ORDER BY idx", (c["id"],))]
    return c


def campaigns(store: Store) -> list[dict]:
    return [dict(zip(("id", "name", "kind", "state", "created_s"), r)) for r in
            store.rows("SELECT id, name, kind, state, created_s FROM campaigns ORDER BY id")]


_METER_FIELDS = ("serial", "wave", "state", "attempts", "failures", "worker", "stage", "not_before_s", "result",
                 "reason", "warnings", "from_version", "to_version", "switch_s", "ended_s")


def members(store: Store, cid: int, *, with_reports: bool = False) -> list[dict]:
    cols = ", ".join(_METER_FIELDS + (("report",) if with_reports else ()))
    out = []
    for r in store.rows(f"SELECT {cols} FROM campaign_meters WHERE campaign_id = ? ORDER BY wave, serial", (cid,)):
        m = dict(zip(_METER_FIELDS + (("report",) if with_reports else ()), r))
        m["failures"], m["warnings"] = loads(m["failures"], {}), loads(m["warnings"], [])
        if with_reports:
            m["report"] = loads(m["report"])
        out.append(m)
    return out


def summary(store: Store, name_or_id) -> dict:
    """Progress per wave and per result: what `campaign status` shows."""
    c = load(store, name_or_id)
    counts: dict[int, dict[str, int]] = {}
    for wave, state, n in store.rows("SELECT wave, state, COUNT(*) FROM campaign_meters WHERE campaign_id = ? "
                                     "GROUP BY wave, state", (c["id"],)):
        counts.setdefault(wave, {})[state] = n
    for w in c["waves"]:
        w["results"] = {k: counts.get(w["idx"], {}).get(k, 0) for k in ("pending", "in_progress") + FINAL}
    reasons: dict[str, list[str]] = {}
    for serial, reason, state in store.rows(
            "SELECT serial, reason, state FROM campaign_meters WHERE campaign_id = ? AND state IN "
            "('reverted', 'rejected', 'failed', 'timeout', 'link', 'error') ORDER BY serial", (c["id"],)):
        reasons.setdefault(f"{state}: {reason}", []).append(serial)
    c["failure_reasons"] = [{"reason": k, "count": len(v), "meters": v} for k, v in sorted(reasons.items())]
    totals: dict[str, int] = {}
    for w in c["waves"]:
        for k, n in w["results"].items():
            totals[k] = totals.get(k, 0) + n
    c["totals"] = totals
    return c


# --- controls -------------------------------------------------------------------------------------

def set_state(store: Store, name_or_id, action: str) -> dict:
    """pause, resume, abort, or approve (the next wave waiting for approval)."""
    c = load(store, name_or_id)
    cid, state = c["id"], c["state"]
    if state in ("aborted", "completed"):
        raise CommandError(f"campaign {c['name']} is {state}: nothing to {action}")
    if action == "pause":
        if state != "running":
            raise CommandError(f"campaign {c['name']} is {state}, not running")
        _set(store, cid, "paused", "paused by the operator")
    elif action == "resume":
        if state != "paused":
            raise CommandError(f"campaign {c['name']} is {state}, not paused")
        _set(store, cid, "running", None)
    elif action == "abort":
        abort(store, cid, "aborted by the operator")
    elif action == "approve":
        waiting = [w for w in c["waves"] if w["state"] == "awaiting_approval"]
        if not waiting:
            raise CommandError(f"campaign {c['name']} has no wave waiting for approval")
        store.x("UPDATE waves SET state = 'pending', approved = 1 WHERE campaign_id = ? AND idx = ?",
                (cid, waiting[0]["idx"]))
        _log(store, cid, None, "approved", f"{waiting[0]['name']} approved")
    else:
        raise CommandError(f"no campaign action {action!r}")
    return summary(store, cid)


def _set(store: Store, cid: int, state: str, reason: str | None) -> None:
    store.x("UPDATE campaigns SET state = ?, reason = ?, updated_s = ? WHERE id = ?", (state, reason, time.time(), cid))
    _log(store, cid, None, state, reason or state)


def abort(store: Store, cid: int, reason: str) -> None:
    """No new meter starts; pending meters are skipped, left as they were; a meter in flight
    that has not switched yet stops before its activation (the runner's plan says no)."""
    with store.tx():
        store.x("UPDATE campaigns SET state = 'aborted', reason = ?, updated_s = ? WHERE id = ? AND state <> 'aborted'",
                (reason, time.time(), cid))
        store.x("UPDATE campaign_meters SET state = 'skipped', reason = ?, ended_s = ? WHERE campaign_id = ? AND "
                "state = 'pending'", ("campaign aborted: " + reason, time.time(), cid))
        store.x("UPDATE waves SET state = 'aborted' WHERE campaign_id = ? AND state IN ('pending', 'running', "
                "'awaiting_approval')", (cid,))
        _log(store, cid, None, "aborted", reason)


# --- running -------------------------------------------------------------------------------------

def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another host's worker: only its heartbeat tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    """One campaign worker: claims meters of the current wave, runs each in a thread (at most
    max_in_flight at once in this worker), records results, and moves the waves on.
    Several workers, on several hosts with PostgreSQL, may run one campaign together."""

    def __init__(self, store: Store, name_or_id, keys: Keys, *, worker: str | None = None,
                 deltas_dir: Path | None = None, on_change=None):
        self.store, self.keys = store, keys
        self.c = load(store, name_or_id)
        self.cid, self.policy = self.c["id"], Policy(**_policy_dict(self.c["policy"]))
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.images = {b: Image.read(Path(v["path"])) if self.c["kind"] == "upgrade" else None
                       for b, v in self.c["images"].items()}
        for b, v in self.c["images"].items():
            img = self.images[b]
            if img is not None and img.image_id.hex() != v["image_id"]:
                raise CommandError(f"{v['path']} is no longer the image the campaign was made with")
        self.deltas = _load_deltas(deltas_dir, self.images) if deltas_dir else {}
        self.on_change = on_change or (lambda: None)
        self._inflight: dict = {}  # future -> (serial, started monotonic, meter holder)
        self._stop = threading.Event()

    # -- the worker's presence ------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.policy.lease_s / 3):
            self.store.x("UPDATE workers SET heartbeat_s = ? WHERE id = ?", (time.time(), self.worker))

    def _register(self) -> None:
        now = time.time()
        self.store.x("INSERT INTO workers (id, host, pid, campaign_id, started_s, heartbeat_s) VALUES (?, ?, ?, ?, ?, ?)",
                     (self.worker, socket.gethostname(), os.getpid(), self.cid, now, now))

    def recover(self) -> list[str]:
        """Meters left in progress by a worker that is gone go back to the queue (their stored
        snapshot and stage stay: the next run takes each from where the meter is)."""
        now = time.time()
        workers = {r[0]: r[1:] for r in self.store.rows("SELECT id, host, pid, heartbeat_s FROM workers")}
        dead = [w for w, (host, pid, beat) in workers.items()
                if w != self.worker and (now - beat > self.policy.lease_s or not _alive(host, pid))]
        taken = []
        with self.store.tx():
            for serial, w in self.store.rows("SELECT serial, worker FROM campaign_meters WHERE campaign_id = ? AND "
                                             "state = 'in_progress'" + self.store.for_update(), (self.cid,)):
                if w in dead or w not in workers:
                    self.store.x("UPDATE campaign_meters SET state = 'pending', worker = NULL WHERE campaign_id = ? "
                                 "AND serial = ? AND state = 'in_progress'", (self.cid, serial))
                    taken.append(serial)
            if dead:
                self.store.many("DELETE FROM workers WHERE id = ?", [(w,) for w in dead])
        for serial in taken:
            _log(self.store, self.cid, serial, "resumed", "its worker stopped; the meter goes on from where it is")
        return taken

    # -- the loop -----------------------------------------------------------------------------
    def run(self, *, wait: bool = True, poll_s: float = 0.2) -> dict:
        """Work until the campaign ends (completed or aborted) or waits for the operator (paused,
        or a wave waits for approval) with nothing in flight here. With wait=False, also return
        when what is left waits for a later time (a maintenance window, a retry) or runs at
        another worker."""
        self._register()
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        pool = ThreadPoolExecutor(max_workers=self.policy.max_in_flight, thread_name_prefix="meter")
        try:
            self.recover()
            while True:
                self._collect(poll_s)
                self._expire()
                c = load(self.store, self.cid)
                state = c["state"]
                if state in ("aborted", "completed"):
                    if not self._inflight:
                        return summary(self.store, self.cid)
                    continue
                wave = self._current_wave(c)
                if wave is None:
                    if not self._inflight and self._finish_if_done():
                        return summary(self.store, self.cid)
                    time.sleep(poll_s)
                    continue
                if state == "paused" or wave["state"] == "awaiting_approval":
                    if not self._inflight:
                        return summary(self.store, self.cid)
                    continue
                if wave["state"] == "pending":
                    self.store.x("UPDATE waves SET state = 'running', started_s = ? WHERE campaign_id = ? AND idx = ? "
                                 "AND state = 'pending'", (time.time(), self.cid, wave["idx"]))
                    _log(self.store, self.cid, None, "wave", f"{wave['name']} started")
                free = self.policy.max_in_flight - len(self._inflight)
                started = self._claim(wave["idx"], free) if free > 0 else []
                for serial in started:
                    holder: dict = {}
                    fut = pool.submit(self._run_meter, serial, holder)
                    self._inflight[fut] = (serial, time.monotonic(), holder)
                if not started and not self._inflight:
                    if self._close_wave(wave):
                        continue
                    if not wait:  # what is left waits for a later time, or runs at another worker
                        return summary(self.store, self.cid)
                    time.sleep(poll_s)
        finally:
            self._stop.set()
            for fut, (serial, _, holder) in list(self._inflight.items()):
                _close(holder)
            pool.shutdown(wait=True, cancel_futures=True)
            self.store.x("DELETE FROM workers WHERE id = ?", (self.worker,))

    def stop(self) -> None:
        self._stop.set()

    def _current_wave(self, c: dict) -> dict | None:
        for w in c["waves"]:
            if w["state"] in ("pending", "running", "awaiting_approval"):
                return w
        return None

    def _claim(self, wave: int, n: int) -> list[str]:
        now = time.time()
        with self.store.tx():
            serials = [r[0] for r in self.store.rows(
                "SELECT serial FROM campaign_meters WHERE campaign_id = ? AND wave = ? AND state = 'pending' AND "
                "not_before_s <= ? ORDER BY serial LIMIT ?" + self.store.for_update(), (self.cid, wave, now, n))]
            self.store.many("UPDATE campaign_meters SET state = 'in_progress', worker = ?, claimed_s = ?, "
                            "attempts = attempts + 1 WHERE campaign_id = ? AND serial = ? AND state = 'pending'",
                            [(self.worker, now, self.cid, s) for s in serials])
        return serials

    def _close_wave(self, wave: dict) -> bool:
        """When no meter of the wave is left to run anywhere: judge it against the success
        threshold; the next wave starts, waits for approval, or the campaign stops."""
        left = self.store.one("SELECT COUNT(*) FROM campaign_meters WHERE campaign_id = ? AND wave = ? AND "
                              "state IN ('pending', 'in_progress')", (self.cid, wave["idx"]))[0]
        if left:
            return False
        rows = dict(self.store.rows("SELECT state, COUNT(*) FROM campaign_meters WHERE campaign_id = ? AND wave = ? "
                                    "GROUP BY state", (self.cid, wave["idx"])))
        ok = rows.get("confirmed", 0) + rows.get("warned", 0)
        size = sum(rows.values()) - rows.get("skipped", 0)
        pct = 100.0 * ok / size if size else 100.0
        passed = pct >= self.policy.success_pct
        with self.store.tx():
            cur = self.store.x("UPDATE waves SET state = ?, ended_s = ? WHERE campaign_id = ? AND idx = ? AND "
                               "state = 'running'", ("succeeded" if passed else "failed", time.time(), self.cid,
                                                     wave["idx"]))
            if cur.rowcount != 1:
                return True  # another worker closed it
            _log(self.store, self.cid, None, "wave", f"{wave['name']}: {ok} of {size} confirmed ({pct:.0f}%)")
        if not passed:
            abort(self.store, self.cid, f"{wave['name']} confirmed {pct:.0f}% of its meters, below the "
                                        f"{self.policy.success_pct:g}% a wave needs")
            return True
        if not self.policy.auto_advance:
            self.store.x("UPDATE waves SET state = 'awaiting_approval' WHERE campaign_id = ? AND idx = ? AND "
                         "state = 'pending'", (self.cid, wave["idx"] + 1))
        self.on_change()
        return True

    def _finish_if_done(self) -> bool:
        c = load(self.store, self.cid)
        if any(w["state"] in ("pending", "running", "awaiting_approval") for w in c["waves"]):
            return False
        cur = self.store.x("UPDATE campaigns SET state = 'completed', updated_s = ? WHERE id = ? AND state IN "
                           "('running', 'paused')", (time.time(), self.cid))
        if cur.rowcount == 1:
            _log(self.store, self.cid, None, "completed", "every wave done")
        return True

    # -- one meter ------------------------------------------------------------------------------
    def _plan(self, status: dict):
        """The activation: at the boundary (or now) when that falls inside a maintenance window
        and outside every pricing event; None (the meter waits, verified) otherwise, or when the
        campaign was aborted meanwhile. A pause stops new meters, not those in flight."""
        if self._state() == "aborted":
            return None
        p = self.policy
        now = status.get("time_s") or time.time()
        interval = status.get("interval_s") or 60
        at = now if p.when == "now" else (now // interval + 1) * interval
        events = [tuple(e) for e in p.pricing_events]
        # The switch and the first boot after it (a few seconds) must both lie outside an event.
        if in_windows(p.windows, at) and not any(s - 30 <= at < e for s, e in events):
            return p.when, None
        return None

    def _run_meter(self, serial: str, holder: dict) -> dict:
        row = self.store.one("SELECT before, stage, to_version FROM campaign_meters WHERE campaign_id = ? AND serial = ?",
                             (self.cid, serial))
        before, to_version = loads(row[0]), row[2]
        fm = fleet.meter(self.store, serial)

        def stage(name: str) -> None:
            self.store.x("UPDATE campaign_meters SET stage = ?, stage_s = ? WHERE campaign_id = ? AND serial = ?",
                         (name, time.time(), self.cid, serial))
            self.on_change()

        def keep(key: str, value) -> None:
            if key in ("before", "after"):  # the snapshots are meter data too (steps 8 and 13)
                mdms.store_snapshot(self.store, serial, value)
            if key == "before":
                self.store.x("UPDATE campaign_meters SET before = ? WHERE campaign_id = ? AND serial = ?",
                             (dumps(value), self.cid, serial))
            elif key == "activation":
                self.store.x("UPDATE campaign_meters SET switch_s = ? WHERE campaign_id = ? AND serial = ?",
                             (value["at_s"], self.cid, serial))

        meter = fleet.open_meter(fm, self.policy.link_timeout_s, self.keys.utility_secret)
        holder["meter"] = meter
        try:
            if self.c["kind"] == "rollback":
                return revert(meter, expect_version=to_version, stage=stage)
            img = self.images.get(fm.board)
            if img is None:
                return {"result": "rejected", "reason": f"the campaign has no image for board {fm.board}"}
            return upgrade(meter, img, when=self.policy.when, registers=self.policy.registers, ack=self.policy.ack,
                           stage=stage, deltas=self.deltas.get(fm.board, ()), delta=self.policy.delta,
                           plan=self._plan, keep=keep, before=before)
        finally:
            meter.link.close()

    def _collect(self, timeout_s: float) -> None:
        if not self._inflight:
            return
        done, _ = wait(list(self._inflight), timeout=timeout_s, return_when=FIRST_COMPLETED)
        for fut in done:
            serial, _, holder = self._inflight.pop(fut)
            if holder.get("expired"):
                continue  # recorded as a timeout already
            try:
                report = fut.result()
            except TransportError as e:
                report = {"result": "link", "reason": " ".join(str(e).split())}
            except MeterfwError as e:
                report = {"result": "error", "reason": " ".join(str(e).split())}
            self._record(serial, report)

    def _expire(self) -> None:
        now = time.monotonic()
        for fut, (serial, t0, holder) in list(self._inflight.items()):
            if now - t0 > self.policy.meter_timeout_s and not holder.get("expired"):
                holder["expired"] = True
                _close(holder)  # the flow's next read fails and its thread ends
                self._record(serial, {"result": "timeout",
                                      "reason": f"no result within {self.policy.meter_timeout_s:g} s"})

    def _record(self, serial: str, report: dict) -> None:
        """A meter's outcome: final, or back to the queue (a retry, or an activation deferred)."""
        result, reason = report["result"], report.get("reason")
        now = time.time()
        warnings = [f"health check {h.get('check')} ({h.get('severity')}): {h.get('message')}"
                    for h in (report.get("after") or {}).get("health_failed") or []]
        if result == "confirmed" and (warnings or report.get("discrepancies")):
            warnings += [d for d in report.get("discrepancies") or [] if d not in warnings]
            result = "warned"  # an important failure is reported but is no failure of the upgrade
        row = self.store.one("SELECT attempts, failures FROM campaign_meters WHERE campaign_id = ? AND serial = ?",
                             (self.cid, serial))
        attempts, failures = row[0], loads(row[1], {})
        requeue_at = None
        if result == "deferred" or (result == "rejected" and "pricing" in (reason or "")):
            requeue_at = self._next_chance(now)
            self.store.x("UPDATE campaign_meters SET attempts = attempts - 1 WHERE campaign_id = ? AND serial = ?",
                         (self.cid, serial))
        elif result in FAILURE_KINDS:
            failures[result] = failures.get(result, 0) + 1
            if failures[result] <= self.policy.retries.get(result, 0):
                requeue_at = now + self.policy.retry_after_s
        if requeue_at is not None and self._state() == "aborted":
            requeue_at, result = None, "skipped"
            reason = "campaign aborted before this meter switched; it keeps its image"
        with self.store.tx():
            if requeue_at is not None:
                self.store.x("UPDATE campaign_meters SET state = 'pending', worker = NULL, not_before_s = ?, "
                             "failures = ?, reason = ?, report = ? WHERE campaign_id = ? AND serial = ?",
                             (requeue_at, dumps(failures), reason, dumps(report), self.cid, serial))
            else:
                self.store.x("UPDATE campaign_meters SET state = ?, result = ?, reason = ?, warnings = ?, failures = ?, "
                             "report = ?, ended_s = ? WHERE campaign_id = ? AND serial = ?",
                             (result, report["result"], reason, dumps(warnings), dumps(failures), dumps(report), now,
                              self.cid, serial))
        if requeue_at is None:
            _log(self.store, self.cid, serial, result, reason or result)
            if self.c["kind"] == "upgrade" and result in ("confirmed", "warned"):
                fleet.seen(self.store, serial, {"active_version": report.get("active_version"),
                                                "active_image_id": report.get("image_id")})
            self._check_errors()
        self.on_change()

    def _state(self) -> str:
        """The campaign's state now (an operator or another worker may have changed it)."""
        return self.store.one("SELECT state FROM campaigns WHERE id = ?", (self.cid,))[0]

    def _count(self, states: tuple) -> int:
        """This campaign's meters in `states`: a few entries of the index by state, not a scan."""
        marks = ", ".join("?" * len(states))
        return self.store.one(f"SELECT COUNT(*) FROM campaign_meters WHERE campaign_id = ? AND state IN ({marks})",
                              (self.cid, *states))[0]

    def _next_chance(self, now: float) -> float:
        p = self.policy
        t = next_opening(p.windows, [tuple(e) for e in p.pricing_events], now + 60)
        return t if t is not None else now + 3600

    def _check_errors(self) -> None:
        """The error threshold: trips once enough meters ran (min_executed), and aborts."""
        if self.policy.error_threshold is None:
            return
        # Failures first: with none, nothing can trip, and the meters that went well (nearly the
        # whole campaign) are not counted again after each meter.
        failed = self._count(FAILURE_KINDS)
        if not failed:
            return
        executed = failed + self._count(("confirmed", "warned"))
        if executed < self.policy.min_executed:
            return
        kind, limit = _threshold(self.policy.error_threshold)
        tripped = failed >= limit if kind == "count" else 100.0 * failed / executed >= limit
        if tripped and self._state() != "aborted":
            abort(self.store, self.cid, f"error threshold {self.policy.error_threshold} reached: {failed} of "
                                        f"{executed} meters failed")


def _close(holder: dict) -> None:
    """Stop a meter's flow: its link refuses every further read, so its thread ends."""
    meter = holder.get("meter")
    if meter is not None:
        meter.link.shut()


def _load_deltas(folder: Path, images: dict) -> dict:
    from .delta import Delta
    from .image import ImageError
    out: dict = {}
    for path in sorted(Path(folder).glob("*.mfd")):
        try:
            d = Delta.read(path)
        except ImageError:
            continue
        for board, img in images.items():
            if img is not None and d.image_id == img.image_id:
                out.setdefault(board, []).append(d)
    return out


def iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


