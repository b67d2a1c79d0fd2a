"""`make bench`'s HAN enrollment section (issue #13, NFR2): how long a customer waits, from the
enrollment request to the customer notification record, over a batch of enrollments with
realistic failures, against NFR2 (90% within 2 minutes, all within 30 minutes).

Four sim meters with a HAN radio (`--han ok`, 115200 baud, the meter's 900 s intervals) serve
four premises; 24 enrollments go through the registry (hil's own copy of `meterfw han enroll`:
enrollment.enroll, the same code, one SQLite database) with the usual 180 s join window. Each
meter's enrollments run one after another, as an installer enrolls a premises' devices; the four
meters run at once. Most succeed; two carry another device's install code (a good CRC, so only
the meter finds out), one device is silent, one fails its self-test, one is of a technology the
meter has no driver for, and one is never switched on, so its join window runs out: the one
that takes the whole window. Each is timed by the registry's own timestamps (requested_s to
notified_s). Nothing here is asserted by a test.

    python -m hil.bench han [--markdown]
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hil import supervisor as sup
from hil.supervisor.han import add_device
from meterfw import enrollment as E
from meterfw import fleet
from meterfw.han import with_crc
from meterfw.image import build_image
from meterfw.keys import init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.store import Store

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "bench-han"
METERS = 4
WINDOW_S = 180
BAUD = 115200
AREA = "bench"
# (case, count, the outcome expected). 18 of 24 succeed.
CASES = (("ok", 18, "enrolled"), ("wrong install code", 2, "failed"), ("silent device", 1, "failed"),
         ("failing self-test", 1, "failed"), ("unknown technology", 1, "failed"), ("never switched on", 1, "failed"))
_BEHAVIOUR = {"silent device": "silent", "failing self-test": "failing-self-test"}
KINDS = ("thermostat", "display", "load-control", "ev-charger")
FAST_S, SLOW_S = 120.0, 1800.0  # NFR2: 90% within 2 minutes, all within 30
FAST_SHARE = 0.9
# The meters close an interval every INTERVAL_S while the HAN is busy, and keep the lateness of
# their last 64 closes (firmware/metering.py): 2 s keeps the whole of a meter's enrollments but
# the longest window's first minute. The target is the bench's own for closes during other work.
INTERVAL_S = 2
LATE_TARGET_MS = 50


def _plan(rng: random.Random) -> list[list[dict]]:
    """The enrollments, dealt to the meters: each one a device on that meter's premises (or not)."""
    todo = [case for case, n, _ in CASES for _ in range(n)]
    rng.shuffle(todo)
    per_meter: list[list[dict]] = [[] for _ in range(METERS)]
    for i, case in enumerate(todo):
        code = with_crc(rng.randbytes(16))
        per_meter[i % METERS].append({
            "case": case, "eui64": f"00124B00BE{i:06X}", "kind": KINDS[i % len(KINDS)],
            "tech": "plc" if case == "unknown technology" else "zigbee-se", "code": code.hex().upper(),
            "given": with_crc(rng.randbytes(16)).hex().upper() if case == "wrong install code" else code.hex().upper()})
    return per_meter


def measure(say) -> dict:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    keys_dir = WORK / "keys"
    init_keys(keys_dir)
    image = WORK / "v1.mfw"
    image.write_bytes(build_image(FIRMWARE, "sim", "1.0.0", load_keys(keys_dir)))
    secret = load_keys(keys_dir, private=False).utility_secret
    db = str(WORK / "office.db")
    plan = _plan(random.Random(13))
    dirs, ports = [], []
    try:
        for i in range(METERS):
            d = WORK / f"meter{i}"
            d.mkdir()
            (d / "sim.json").write_text(json.dumps({"han": "ok"}))
            dirs.append(d)
            ports.append(sup.start(d, image=image, keys=keys_dir, interval_s=INTERVAL_S, baud=BAUD, seed=50 + i,
                                   serial=f"HB{i}")["port"])
            for dev in plan[i]:
                if dev["case"] != "never switched on":
                    add_device(d, dev["eui64"], dev["code"], dev["kind"], dev["tech"],
                               _BEHAVIOUR.get(dev["case"], "normal"))
        with Store(db) as store:
            fleet.import_meters(store, fleet.parse_csv("serial,board,url,area\n" + "".join(
                f"HB{i},sim,{port},{AREA}\n" for i, port in enumerate(ports))))
            E.set_area(store, AREA, ["zigbee-se", "plc"], "bench")
        say(f"han: {sum(map(len, plan))} enrollments over {METERS} meters, join window {WINDOW_S} s")

        def premises(i: int) -> list[dict]:
            out = []
            with Store(db) as store:
                connect = E.connector(store, secret, 3.0)
                for dev in plan[i]:
                    e = E.enroll(store, connect, meter=f"HB{i}", eui64=dev["eui64"], install_code=dev["given"],
                                 kind=dev["kind"], tech=dev["tech"], customer=f"C{i}", premises=f"P{i}",
                                 program="demand-response", consent="yes", contact=f"c{i}@example.org",
                                 actor="bench", window_s=WINDOW_S)
                    out.append({"case": dev["case"], "state": e["state"], "message": e["message"],
                                "seconds": round(e["notified_s"] - e["requested_s"], 2)})
                    say(f"han: HB{i} {dev['case']}: {e['state']} in {out[-1]['seconds']} s")
            return out

        def metering(i: int) -> dict:
            with Store(db) as store:
                meter = E.connector(store, secret, 3.0)(f"HB{i}")
            try:
                return meter.status()["metering"]
            finally:
                meter.link.close()

        before = [metering(i) for i in range(METERS)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(METERS) as pool:
            results = [r for rs in pool.map(premises, range(METERS)) for r in rs]
        wall_s = round(time.monotonic() - t0)
        late, closes = [], 0
        for i, b in enumerate(before):  # the closes made while the HAN enrolled, as far as the meter kept them
            a = metering(i)
            n = a["closes"] - b["closes"]
            closes += n
            late += a["late_ms"][-n:] if n > 0 else []
        return {"results": results, "wall_s": wall_s, "closes": closes, "late_ms": late}
    finally:
        for d in dirs:
            sup.stop(d)


def _pct(values: list, q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(len(s) * q) - 1)]  # nearest rank


def figures(run: dict) -> dict:
    secs = [r["seconds"] for r in run["results"]]
    fast, slow = sum(s <= FAST_S for s in secs) / len(secs), sum(s <= SLOW_S for s in secs) / len(secs)
    expected = {case: want for case, _, want in CASES}
    return {"enrollments": len(secs), "meters": METERS, "window_s": WINDOW_S,
            "enrolled": sum(r["state"] == "enrolled" for r in run["results"]),
            "p50_s": _pct(secs, 0.5), "p90_s": _pct(secs, 0.9), "max_s": max(secs),
            "within_2_min": round(fast, 3), "within_30_min": round(slow, 3),
            "nfr2_2_min": "ok" if fast >= FAST_SHARE else "MISSED", "nfr2_30_min": "ok" if slow == 1 else "MISSED",
            "cases": {case: [r["seconds"] for r in run["results"] if r["case"] == case] for case, _, _ in CASES},
            "unexpected": [r for r in run["results"] if r["state"] != expected[r["case"]]],
            "closes": run["closes"], "late_kept": len(run["late_ms"]), "late_max_ms": max(run["late_ms"], default=None),
            "late_ok": "ok" if max(run["late_ms"], default=0) <= LATE_TARGET_MS else "MISSED",
            "wall_s": run["wall_s"], "results": run["results"]}


def table(f: dict, markdown: bool = False) -> str:
    rows = [("enrollment to notification, p50", f"{f['p50_s']:.1f} s", ""),
            ("enrollment to notification, p90", f"{f['p90_s']:.1f} s", ""),
            ("enrollment to notification, max", f"{f['max_s']:.1f} s", ""),
            ("notified within 2 minutes", f"{100 * f['within_2_min']:.0f}%", f"≥ 90%: {f['nfr2_2_min']}"),
            ("notified within 30 minutes", f"{100 * f['within_30_min']:.0f}%", f"100%: {f['nfr2_30_min']}")]
    rows += [(f"interval-close lateness while the HAN works, max ({f['late_kept']} of {f['closes']} closes kept)",
              f"{f['late_max_ms']} ms", f"<= {LATE_TARGET_MS} ms: {f['late_ok']}")]
    rows += [(f"  {case} ({len(s)})", f"p50 {_pct(s, 0.5):.1f} s, max {max(s):.1f} s", "")
             for case, s in f["cases"].items() if s]
    if markdown:
        return "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    return "\n".join(f"  {a:34} {b:28} {c}" for a, b, c in rows)


def section(say, markdown: bool = False) -> int:
    """Measure, print, write build/bench-han.json; 1 when an enrollment did not end as its case
    should (a missed target is printed, not an exit status)."""
    f = figures(measure(say))
    path = REPO / "build" / "bench-han.json"
    path.write_text(json.dumps(f, indent=1) + "\n")
    print(f"\nHAN enrollment to customer notification (NFR2): {f['enrollments']} enrollments over {f['meters']} sim "
          f"meters, {f['enrolled']} enrolled, join window {f['window_s']} s")
    print(table(f))
    for r in f["unexpected"]:
        print(f"unexpected: {r['case']} ended {r['state']}: {r['message']}")
    print(f"han section: {f['wall_s']} s of host time; written to {path}")
    if markdown:
        print("\n" + table(f, markdown=True))
    return 1 if f["unexpected"] else 0
