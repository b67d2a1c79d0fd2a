"""`make bench`'s campaign section (#12): the campaign engine measured at fleet scale, over 1,000
and 10,000 load meters (hil/loadmeter.py), each figure from one run per fleet size.

For each size the load fleet serves in a process of its own (`python -m hil.loadmeter`: 115200
baud, the sim board's flash timings, the meter's 900 s intervals), its inventory goes into a fresh
SQLite database, and a campaign (a test population, then waves of 1%, 10% and 100%, a 2% error
threshold) is run by a campaign process of its own: the unchanged Runner, as `meterfw campaign
run` runs it, so the CPU and memory it reports are the engine's and its meters' flows' alone.

The image is the realistic fleet upgrade: a one-module fix sent as a delta (~2.3 KB on the wire,
`meterfw image delta`), activated at once, so a meter's link time is its snapshots, transfer,
verify, reboot and verdict, not a wait for an interval boundary.

The campaign process's own overhead is the CPU its engine spends outside the per-meter flows
(its main loop's thread CPU time) plus its time in the database (Store.busy_s, the flows'
statements included: an upper bound), as a share of the summed link time (the per-meter report's
`seconds`). Nothing here is asserted by a test.

    python -m hil.bench_campaign [1000] [10000] [--markdown]
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "bench-campaign"
SIZES = (1000, 10000)
# A head end runs a link per meter it reaches at once, and the engine must keep every one busy
# (a slot left idle shows as fewer meters per minute). 200 links of ~9 s a meter take 10,000
# meters through in ~9 minutes, and leave the campaign process (one core at most: the GIL) a
# quarter of a core spare; pyserial's socket:// waits in select(), which takes no descriptor
# above 1023, so one process could not run many more than 1,000 anyway.
MAX_IN_FLIGHT = 200
TEST_POPULATION = 5  # the utility's permanent test meters: LM000001..LM000005
WAVES = ("1%", "10%", "100%")
ERROR_THRESHOLD, MIN_EXECUTED = "2%", 20
OVERHEAD_TARGET = 0.05  # of the summed link time
MEMORY_RATIO_TARGET = 10  # peak memory at 10,000 meters over that at 1,000: below 10 is sublinear
FLEET_START_S = 300  # 10,000 endpoints listen within seconds; this is a hang


def time_limit_s(meters: int) -> float:
    """How long a campaign over `meters` may run before the bench stops it (and says so): the
    waves' rounds (~9 s a meter, 200 in flight) take ~0.05 s a meter, a busy machine more."""
    return 120 + 0.06 * meters


# --- the campaign process ---------------------------------------------------------------------------

def _peak_kb(status_path: str = "/proc/self/status") -> int | None:
    """VmHWM (the resident set's peak) in kB, or None where /proc does not say."""
    try:
        for line in Path(status_path).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """A process's CPU time so far (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def campaign_process(db: str, name: str, keys_dir: Path, deltas_dir: Path, out: Path) -> int:
    """Run campaign `name` to its end, as `meterfw campaign run` does, and write what the
    process measured of itself to `out`."""
    import resource

    from meterfw.campaign import Runner
    from meterfw.keys import load_keys
    from meterfw.store import Store

    # One socket per meter in flight, and the database's files.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    keys = load_keys(keys_dir, private=False)
    wall0, cpu0, main0 = time.monotonic(), time.process_time(), time.thread_time()
    with Store(db) as store:
        runner = Runner(store, name, keys, deltas_dir=deltas_dir)
        try:
            s = runner.run()
            state, reason = s["state"], s.get("reason")
        except KeyboardInterrupt:  # the bench's time limit: the Runner closed its links on the way out
            state, reason = "stopped", "at the bench's time limit"
        main_cpu_s = time.thread_time() - main0  # the main loop: claims, results, waves, thresholds
        db_s = store.busy_s
    out.write_text(json.dumps({
        "state": state, "reason": reason, "wall_s": time.monotonic() - wall0, "cpu_s": time.process_time() - cpu0,
        "main_cpu_s": main_cpu_s, "db_s": db_s,
        "peak_kb": _peak_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    return 0


# --- one fleet size -----------------------------------------------------------------------------------

def _images(work: Path, keys_dir: Path) -> tuple[Path, Path, Path]:
    """v1 (what the fleet runs), v2 (v1 with a one-module fix) and a folder with the delta
    v1 -> v2 in it, as `meterfw image delta` writes it."""
    from hil.pytest_plugin import build_changed
    from meterfw.delta import apply, build
    from meterfw.image import Image, build_image
    from meterfw.keys import load_keys
    from meterfw.paths import FIRMWARE

    v1 = work / "v1.mfw"
    v1.write_bytes(build_image(FIRMWARE, "sim", "1.0.0", load_keys(keys_dir), build_time=1))
    v2 = build_changed(work, "sim", keys_dir, "1.1.0", 1)
    deltas = work / "deltas"
    deltas.mkdir()
    base, new = Image.read(v1), Image.read(v2)
    d = build(base, new)
    assert apply(base.data, d) == new.data
    (deltas / "v1-to-v2.mfd").write_bytes(d.encode())
    return v1, v2, deltas


class _Fleet:
    """`python -m hil.loadmeter` serving `count` meters running `image`, until closed."""

    def __init__(self, count: int, image: Path, keys_dir: Path, work: Path):
        self.ports = work / f"ports-{count}.json"
        self.log = work / f"loadmeter-{count}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hil.loadmeter", "--count", str(count), "--image", str(image),
                 "--keys", str(keys_dir), "--ports-file", str(self.ports)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)

    def wait_ready(self) -> list[dict]:
        deadline = time.monotonic() + FLEET_START_S
        while not self.ports.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the load fleet exited {self.proc.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the load fleet did not listen within {FLEET_START_S} s")
            time.sleep(0.2)
        return json.loads(self.ports.read_text())

    def _tail(self) -> str:
        return " ".join(self.log.read_text().split()[-40:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_size(count: int, images: tuple, keys_dir: Path, work: Path, say) -> dict:
    """One campaign over `count` load meters; the figures of hil.bench_campaign's table."""
    from meterfw import campaign as C
    from meterfw import fleet as F
    from meterfw.image import Image
    from meterfw.keys import load_keys
    from meterfw.store import Store, loads

    v1, v2, deltas = images
    t0 = time.monotonic()
    fleet = _Fleet(count, v1, keys_dir, work)
    try:
        endpoints = fleet.wait_ready()
        r = {"meters": count, "fleet_start_s": round(time.monotonic() - t0, 1)}
        say(f"campaign {count}: {count} load meters listening after {r['fleet_start_s']} s")
        db = str(work / f"office-{count}.db")
        with Store(db) as store:
            F.import_meters(store, [F.FleetMeter(ep["serial"], ep["board"], ep["url"],
                                                 test_population=i < TEST_POPULATION)
                                    for i, ep in enumerate(endpoints)])
            policy = C.Policy(waves=WAVES, test_population=True, error_threshold=ERROR_THRESHOLD,
                              min_executed=MIN_EXECUTED, max_in_flight=MAX_IN_FLIGHT, when="now")
            C.create(store, "bench", {"sim": (str(v2), Image.read(v2))}, F.Selection(), policy,
                     load_keys(keys_dir, private=False))
        out = work / f"campaign-{count}.json"
        fleet_cpu0 = _cpu_s(fleet.proc.pid)
        say(f"campaign {count}: running, {MAX_IN_FLIGHT} meters in flight")
        log_path = work / f"campaign-{count}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hil.bench_campaign", "--campaign-process", db, "bench",
                                     str(keys_dir), str(deltas), str(out)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)
            try:
                proc.wait(time_limit_s(count))
            except subprocess.TimeoutExpired:
                r["stopped_at_s"] = round(time_limit_s(count))
                say(f"campaign {count}: stopped at the bench's limit of {r['stopped_at_s']} s")
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # the Runner closes its links; the figures so far are written
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the campaign process exited {proc.returncode}; see {log_path}")
        r.update(json.loads(out.read_text()))
        fleet_cpu1 = _cpu_s(fleet.proc.pid)
        r["fleet_cpu_s"] = None if fleet_cpu0 is None or fleet_cpu1 is None else fleet_cpu1 - fleet_cpu0
        r["fleet_peak_kb"] = _peak_kb(f"/proc/{fleet.proc.pid}/status")
        with Store(db) as store:
            rows = store.rows("SELECT m.wave, m.state, m.attempts, m.report, m.reason FROM campaign_meters m "
                              "JOIN campaigns c ON c.id = m.campaign_id WHERE c.name = 'bench'")
        reports = [(wave, state, attempts, loads(report) or {}, reason)
                   for wave, state, attempts, report, reason in rows]
        r["confirmed"] = sum(state in ("confirmed", "warned") for _, state, *_ in reports)
        r["retried"] = sum(attempts > 1 for _, _, attempts, *_ in reports)
        r["link_s"] = [rep["seconds"] for _, _, _, rep, _ in reports if "seconds" in rep]
        r["link_s_test"] = [rep["seconds"] for wave, _, _, rep, _ in reports if wave == 0 and "seconds" in rep]
        r["bytes_on_wire"] = [rep["bytes_on_wire"] for *_, rep, _ in reports if "bytes_on_wire" in rep]
        left: dict = {}  # state -> [meters, one reason]
        for _, state, _, _, reason in reports:
            if state not in ("confirmed", "warned"):
                left.setdefault(state, [0, reason])[0] += 1
        r["not_confirmed"] = [f"{n} {state}" + (f" (e.g. {reason})" if reason else "")
                              for state, (n, reason) in sorted(left.items())]
        say(f"campaign {count}: {r['state']}, {r['confirmed']} of {count} confirmed in {r['wall_s']:.0f} s")
        return r
    finally:
        fleet.close()


def measure(say, sizes=SIZES) -> dict:
    """{size: figures of one campaign over that many load meters} (None where it failed) and
    each failure's reason under "notes"."""
    from meterfw.keys import init_keys

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    keys_dir = WORK / "keys"
    init_keys(keys_dir)
    images = _images(WORK, keys_dir)
    out: dict = {"runs": {}, "notes": {}, "max_in_flight": MAX_IN_FLIGHT}
    for n in sizes:
        try:
            out["runs"][n] = run_size(n, images, keys_dir, WORK, say)
        except Exception as e:  # the other size's column still stands; this one says why it has none
            out["runs"][n] = None
            out["notes"][n] = f"failed: {e}"
            say(f"campaign {n}: {out['notes'][n]}")
    return out


# --- the table ----------------------------------------------------------------------------------------

def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _pct(values: list, q: float):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def figures(result: dict) -> list[dict]:
    """Rows of the campaign table: {name, unit, target, values {size: value}, verdict {size: ...}}."""
    from hil.bench import _verdict

    runs = result["runs"]
    sizes = list(runs)

    def col(fn, digits=None):
        vals = {}
        for n, r in runs.items():
            v = fn(r, n) if r is not None else None
            vals[n] = round(v, digits or None) if isinstance(v, float) and digits is not None else v
        return vals

    def overhead(r, n):
        return (r["main_cpu_s"] + r["db_s"]) / sum(r["link_s"]) if r["link_s"] else None

    small, big = (min(sizes), max(sizes)) if len(sizes) > 1 else (None, None)
    both = small is not None and runs.get(small) and runs.get(big)
    ratio = {n: (round(runs[big]["peak_kb"] / runs[small]["peak_kb"], 2) if both and n == big else None)
             for n in sizes}
    rows = [
        ("meters confirmed", col(lambda r, n: r["confirmed"]), "meters", "= all"),
        ("  campaign state", col(lambda r, n: r["state"]), "", "completed"),
        ("  meters retried (a second attempt or more)", col(lambda r, n: r["retried"]), "meters", "report"),
        ("meters per minute", col(lambda r, n: r["confirmed"] / r["wall_s"] * 60, 0), "meters/min", "report"),
        ("  campaign process's wall time", col(lambda r, n: r["wall_s"], 1), "s", "report"),
        ("  meters in flight at most (max_in_flight)", col(lambda r, n: MAX_IN_FLIGHT), "meters", "report"),
        ("link time per meter (the report's seconds), mean", col(lambda r, n: _mean(r["link_s"]), 2), "s",
         "report"),
        ("  p95", col(lambda r, n: _pct(r["link_s"], 0.95), 2), "s", "report"),
        ("  max", col(lambda r, n: max(r["link_s"], default=None)), "s", "report"),
        ("  mean over the test population (5 meters alone in flight)", col(lambda r, n: _mean(r["link_s_test"]), 2),
         "s", "report"),
        ("  mean / the test population's (1.0: the links' own pace)",
         col(lambda r, n: _mean(r["link_s"]) / _mean(r["link_s_test"]) if r["link_s_test"] else None, 2), "ratio",
         "report"),
        ("  bytes on the wire per meter (delta transfer), mean", col(lambda r, n: _mean(r["bytes_on_wire"]), 0),
         "bytes", "report"),
        ("database time per meter (Store.busy_s / meters)", col(lambda r, n: r["db_s"] / n * 1000, 2), "ms",
         "report"),
        ("  database busy / wall time (one connection, shared under a lock)",
         col(lambda r, n: r["db_s"] / r["wall_s"], 2), "ratio", "report"),
        ("engine's main loop CPU per meter (thread_time)", col(lambda r, n: r["main_cpu_s"] / n * 1000, 2), "ms",
         "report"),
        ("campaign overhead: (main loop CPU + database) / summed link time", col(overhead, 4), "ratio",
         f"<= {OVERHEAD_TARGET}"),
        ("  campaign process CPU per meter, flows included", col(lambda r, n: r["cpu_s"] / n * 1000, 1), "ms",
         "report"),
        ("  campaign process CPU / wall time (1.0: one core, the GIL's limit)",
         col(lambda r, n: r["cpu_s"] / r["wall_s"], 2), "ratio", "report"),
        ("  load fleet process CPU / wall time", col(lambda r, n: r["fleet_cpu_s"] / r["wall_s"]
                                                     if r["fleet_cpu_s"] is not None else None, 2), "ratio",
         "report"),
        ("campaign process peak memory (VmHWM)", col(lambda r, n: r["peak_kb"] / 1024, 1), "MiB", "report"),
        *([(f"  peak memory, {big} meters / {small} meters", ratio, "ratio", f"<= {MEMORY_RATIO_TARGET}")]
          if small is not None else []),
        ("  load fleet process peak memory (VmHWM)", col(lambda r, n: (r["fleet_peak_kb"] or 0) / 1024, 1), "MiB",
         "report"),
        ("  load fleet listening after", col(lambda r, n: r["fleet_start_s"]), "s", "report"),
    ]
    out = []
    for name, values, unit, target in rows:
        verdict = {}
        for n in sizes:
            v = values[n]
            if runs[n] is None:
                verdict[n] = result["notes"].get(n, "not run")
            elif target == "= all":
                verdict[n] = "ok" if v == n else "MISSED"
            elif target == "completed":
                verdict[n] = "ok" if v == "completed" else "MISSED"
            elif v is None:
                verdict[n] = ""
            else:
                verdict[n] = _verdict(v, target)
        out.append({"name": name, "unit": unit, "target": target, "values": values, "verdict": verdict})
    return out


def table(figs: list[dict], markdown: bool = False) -> str:
    sizes = list(figs[0]["values"]) if figs else []

    def cell(f, n):
        v = f["values"][n]
        return "-" if v is None else str(v)

    def verdicts(f):
        vs = [f["verdict"][n] for n in sizes]
        if not any(v in ("ok", "MISSED") for v in vs):
            return ""
        return " / ".join(v if v in ("ok", "MISSED") else "-" for v in vs)

    heads = [f"{n} meters" for n in sizes]
    if markdown:
        lines = ["| figure | " + " | ".join(heads) + " | unit | target | verdict |",
                 "|---|" + "---|" * len(sizes) + "---|---|---|"]
        lines += [f"| {f['name'].strip()} | " + " | ".join(cell(f, n) for n in sizes)
                  + f" | {f['unit']} | {f['target']} | {verdicts(f)} |" for f in figs]
        return "\n".join(lines)
    w = max(len(f["name"]) for f in figs)
    lines = [f"{'figure':{w}}  " + " ".join(f"{h:>13}" for h in heads) + f" {'unit':10} {'target':10} verdict"]
    lines += [f"{f['name']:{w}}  " + " ".join(f"{cell(f, n):>13}" for n in sizes)
              + f" {f['unit']:10} {f['target']:10} {verdicts(f)}" for f in figs]
    return "\n".join(lines)


def section(say, sizes=SIZES, markdown: bool = False) -> int:
    """Measure, print the table, write build/bench-campaign.json; 1 when a size's run failed
    (as hil/bench.py's board columns: a missed target is printed, not an exit status)."""
    t0 = time.monotonic()
    result = measure(say, sizes)
    figs = figures(result)
    (REPO / "build").mkdir(exist_ok=True)
    path = REPO / "build" / "bench-campaign.json"
    path.write_text(json.dumps(figs, indent=1, default=str) + "\n")
    print(f"\ncampaign engine at fleet scale: delta (one-module fix) at 115200 baud, activation now, "
          f"{MAX_IN_FLIGHT} meters in flight")
    print(table(figs))
    for n, note in result["notes"].items():
        print(f"{n} meters: {note}")
    for n, r in result["runs"].items():
        if r and r.get("stopped_at_s"):
            print(f"{n} meters: the campaign was stopped at the bench's limit of {r['stopped_at_s']} s; "
                  f"the figures are those of its run so far")
        elif r and r["state"] != "completed":
            print(f"{n} meters: the campaign {r['state']}: {r['reason']}")
        if r and r["not_confirmed"]:
            print(f"{n} meters not confirmed: {'; '.join(r['not_confirmed'])}")
    print(f"campaign section: {round(time.monotonic() - t0)} s of host time; written to {path}")
    if markdown:
        print("\n" + table(figs, markdown=True))
    return 1 if result["notes"] else 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds like ^C: the fleet and the campaign process are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--campaign-process"]:
        db, name, keys_dir, deltas_dir, out = argv[1:6]
        return campaign_process(db, name, Path(keys_dir), Path(deltas_dir), Path(out))
    sizes = [a for a in argv if a != "--markdown"]
    bad = [a for a in sizes if not (a.isascii() and a.isdigit() and int(a) > 0)]
    if bad:
        print(f"bench_campaign: a fleet size is a count of meters from 1, not {bad[0]!r} "
              f"(python -m hil.bench_campaign [METERS ...] [--markdown]; default 1000 10000)", file=sys.stderr)
        return 64
    signal.signal(signal.SIGTERM, _on_sigterm)

    def say(msg):
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    return section(say, tuple(int(a) for a in sizes) or SIZES, "--markdown" in argv)


if __name__ == "__main__":
    sys.exit(main())
