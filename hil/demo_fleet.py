"""`make demo-fleet`: the utility's fleet upgrade (use case I3, scenario 1) on 8 simulated meters,
through the CLI an operator uses. The vendor signs, the utility approves (two key directories);
a campaign with a test population and two waves upgrades the fleet while one meter's link is
down (reported, and nothing trips); a second campaign with a bad image reverts on the test
population and aborts, leaving the other meters as they were; the MDMS then reads every meter
and reconciles both campaigns. Prints the campaign tables and writes the HTML reports."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hil.demo import BIN, REPO, run
from hil.pytest_plugin import build_variants
from hil.sim import SimBoard

WORK = REPO / "build" / "demo-fleet"
INTERVAL_S = 5
METERS = 8
DOWN = "FM8"  # the meter whose link is down during the first campaign


def mfw(*args: str, ok=(0,)) -> dict:
    shown = " ".join(Path(a).name if a.startswith(str(WORK)) else a for a in args)
    print(f"$ meterfw {shown}", flush=True)
    proc = subprocess.run([str(BIN / "meterfw"), *args, "--json"], text=True, stdout=subprocess.PIPE)
    if proc.returncode not in ok:
        raise SystemExit(f"demo-fleet: `meterfw {shown}` exited {proc.returncode}")
    return json.loads(proc.stdout)


def table(s: dict) -> None:
    print(f"\ncampaign {s['name']}: {s['state']}" + (f" ({s['reason']})" if s.get("reason") else ""))
    print(f"  {'wave':16} {'state':10} {'size':>4} {'confirmed':>9} {'reverted':>8} {'failed':>6} {'skipped':>7}")
    for w in s["waves"]:
        r = w["results"]
        failed = sum(r[k] for k in ("failed", "timeout", "link", "error", "rejected"))
        print(f"  {w['name']:16} {w['state']:10} {w['size']:>4} {r['confirmed'] + r['warned']:>9} "
              f"{r['reverted']:>8} {failed:>6} {r['skipped']:>7}")
    for r in s["failure_reasons"]:
        print(f"  {r['count']} x {r['reason']}: {', '.join(r['meters'])}")


def main() -> int:
    for d in WORK.glob("m*"):
        subprocess.run([str(BIN / "meterfw-sim"), "stop", "--dir", str(d)], capture_output=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    vendor, utility, db = WORK / "vendor-keys", WORK / "utility-keys", str(WORK / "office.db")
    print("== 1. the vendor's and the utility's keys, kept apart; images signed by one, approved by the other")
    run("meterfw", "keys", "init", "--role", "vendor", "--dir", str(vendor))
    run("meterfw", "keys", "init", "--role", "utility", "--dir", str(utility), "--vendor-pub", str(vendor / "vendor.pub"))
    images = {v: WORK / f"meter-{v}.mfw" for v in ("1.0.0", "1.1.0")}
    for version, path in images.items():
        run("meterfw", "image", "build", "--board", "sim", "--version", version, "--keys", str(vendor), "-o", str(path))
    bad = build_variants(WORK / "variants", "sim", vendor, ["critical_health"], "1.1.1")["critical_health"]
    images["bad"] = WORK / "meter-1.1.1-bad.mfw"
    shutil.copy(bad, images["bad"])
    for path in images.values():
        run("meterfw", "image", "approve", str(path), "--keys", str(utility))

    print(f"\n== 2. {METERS} simulated meters on 1.0.0, {INTERVAL_S}-second intervals, two in the test population")
    boards = []
    try:
        for i in range(1, METERS + 1):
            boards.append(SimBoard.start(WORK / f"m{i}", image=images["1.0.0"], keys=utility, interval_s=INTERVAL_S,
                                         seed=40 + i, serial=f"FM{i}"))
        csv = WORK / "fleet.csv"
        csv.write_text("serial,board,url,area,tags,test_population\n" + "".join(
            f"FM{i},sim,{b.port},{'north' if i % 2 else 'south'},residential,{'yes' if i <= 2 else 'no'}\n"
            for i, b in enumerate(boards, 1)))
        mfw("fleet", "import", str(csv), "--db", db)
        found = mfw("fleet", "discover", "--db", db)
        print(f"  {sum(r['reachable'] for r in found)} of {len(found)} meters answer, all on "
              f"{sorted({r['version'] for r in found})}")

        print(f"\n== 3. campaign fleet-1.1.0: test population, then waves of 3 and the rest; {DOWN}'s link is down")
        boards[-1].power_off()
        mfw("campaign", "create", "fleet-1.1.0", "--image", str(images["1.1.0"]), "--keys", str(utility),
            "--db", db, "--waves", "3,100%", "--success-pct", "60", "--error-threshold", "25%",
            "--min-executed", "4", "--max-in-flight", "4", "--retries", "link=1")
        first = mfw("campaign", "run", "fleet-1.1.0", "--keys", str(utility), "--db", db,
                    "--report", str(WORK / "fleet-1.1.0.html"), ok=(0, 1))
        table(first)
        boards[-1].power_on()

        print("\n== 4. campaign fleet-1.1.1 with a bad image: the test population reverts, the threshold trips")
        mfw("campaign", "create", "fleet-1.1.1", "--image", str(images["bad"]), "--keys", str(utility),
            "--db", db, "--version", "1.1.0", "--waves", "100%", "--error-threshold", "2", "--min-executed", "2",
            "--ack", "immediate")
        second = mfw("campaign", "run", "fleet-1.1.1", "--keys", str(utility), "--db", db,
                     "--report", str(WORK / "fleet-1.1.1.html"), ok=(0, 1))
        table(second)

        print("\n== 5. the MDMS reads every meter, validates, and reconciles both campaigns")
        mfw("mdms", "read", "--db", db, ok=(0, 1))
        vee_run = mfw("mdms", "vee", "--db", db)
        errors = [r for r in vee_run["exceptions"] if r["severity"] == "error"]
        print(f"  VEE: {len(vee_run['exceptions'])} exceptions, {len(errors)} errors")
        recs = {name: mfw("mdms", "reconcile", name, "--db", db, ok=(0, 1)) for name in ("fleet-1.1.0", "fleet-1.1.1")}
        for name, rec in recs.items():
            print(f"  {name}: " + ", ".join(f"wave {w['wave']} {w['intact']}/{w['meters']} intact" for w in rec["waves"]))
        fleet = {r["serial"]: r["version"] for r in mfw("fleet", "list", "--db", db)}
        print("  versions now: " + ", ".join(f"{k} {v}" for k, v in sorted(fleet.items())))

        ok = (first["state"] == "completed" and first["totals"]["confirmed"] == METERS - 1
              and first["totals"]["link"] == 1 and second["state"] == "aborted"
              and second["totals"]["reverted"] == 2 and second["totals"]["skipped"] == METERS - 3
              and all(rec["intact"] for rec in recs.values()) and not errors)
        print(f"\n{'DEMO OK' if ok else 'DEMO FAILED'}: reports in {WORK.relative_to(REPO)}/fleet-1.1.0.html and "
              f"fleet-1.1.1.html")
        return 0 if ok else 1
    finally:
        for b in boards:
            b.stop()


if __name__ == "__main__":
    sys.exit(main())
