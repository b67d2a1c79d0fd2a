"""`make demo`: the product's main job on the simulated board, through the same CLI a
technician uses. Builds and signs two images, provisions a simulated Pico meter with the
first, lets it meter, upgrades it live at 115200 baud and prints the report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hil.metrology import true_energy_mwh

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "demo"
BIN = Path(sys.executable).parent
INTERVAL_S = 5
SEED = 7


def run(*args: str, capture: bool = False, quiet: bool = False) -> str:
    shown = " ".join(Path(a).name if a.startswith(str(WORK)) else a for a in args)
    if not quiet:
        print(f"$ {shown}", flush=True)
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], text=True,
                          stdout=subprocess.PIPE if capture else None)
    if proc.returncode not in (0,):
        raise SystemExit(f"demo: `{shown}` exited {proc.returncode}")
    return proc.stdout


def wait_intervals(port: str, n: int) -> list[dict]:
    deadline = time.monotonic() + n * INTERVAL_S + 30
    while time.monotonic() < deadline:
        recs = json.loads(run("meterfw", "--port", port, "read", "intervals", "--json", capture=True, quiet=True))
        if len(recs) >= n:
            return recs
        time.sleep(INTERVAL_S / 2)
    raise SystemExit(f"demo: the meter closed fewer than {n} intervals in time")


def main() -> int:
    meter_dir = WORK / "meter"
    if (meter_dir / "state.json").exists():
        subprocess.run([str(BIN / "meterfw-sim"), "stop", "--dir", str(meter_dir)], capture_output=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    keys, v1, v2 = WORK / "keys", WORK / "meter-1.0.0.mfw", WORK / "meter-1.1.0.mfw"
    print("== 1. keys and two signed images")
    run("meterfw", "keys", "init", "--dir", str(keys))
    run("meterfw", "image", "build", "--board", "sim", "--version", "1.0.0", "--keys", str(keys), "-o", str(v1))
    run("meterfw", "image", "build", "--board", "sim", "--version", "1.1.0", "--keys", str(keys), "-o", str(v2))
    print("\n== 2. a factory-fresh simulated Pico meter with 1.0.0, on a 115200 baud line")
    info = json.loads(run("meterfw-sim", "start", "--dir", str(meter_dir), "--image", str(v1), "--keys", str(keys),
                          "--baud", "115200", "--interval-s", str(INTERVAL_S), "--seed", str(SEED), capture=True))
    port = info["port"]
    try:
        run("meterfw", "--port", port, "status")
        print(f"\n== 3. metering: waiting for 3 closed {INTERVAL_S}-second intervals")
        before = wait_intervals(port, 3)
        print(f"\n== 4. live upgrade to 1.1.0 while it meters (activation at the next interval boundary)")
        report_file = WORK / "report.json"
        print(f"$ meterfw --port {port} --keys keys upgrade {v2.name} --report {report_file.name}", flush=True)
        proc = subprocess.run([str(BIN / "meterfw"), "--port", port, "--keys", str(keys), "upgrade", str(v2),
                               "--report", str(report_file)])
        report = json.loads(report_file.read_text()) if report_file.exists() else {"result": "failed"}
        records = wait_intervals(port, len(before) + 2)
        truth_ok = all(r["energy_mwh"] == true_energy_mwh(SEED, r["start"], r["start"] + r["duration_s"])
                       for r in records if "partial" not in r["flags"])
        print("\n== 5. report")
        rows = [
            ("verdict", report["result"]),
            ("versions", f"{report.get('from_version')} -> {report.get('to_version')}"),
            ("image", f"{report.get('image_bytes')} bytes, payload {report.get('payload_bytes')} bytes"),
            ("transfer", f"{report.get('transfer_seconds')} s at {report.get('transfer_bytes_per_s')} B/s "
                         f"(line 115200 baud = 11520 B/s)"),
            ("whole upgrade", f"{report.get('seconds')} s, boot reason after: {report.get('boot_reason')}"),
            ("intervals", f"{report.get('intervals_before')} before, {report.get('intervals_after')} during/after; "
                          f"missed {report.get('intervals_missed')}, duplicated {report.get('intervals_duplicated')}"),
            ("energy", f"sum of intervals {report.get('interval_energy_mwh')} mWh = register delta "
                       f"{report.get('register_delta_mwh')} mWh: {report.get('energy_conserved')}"),
            ("vs. true energy", f"every whole interval matches the host's metrology twin: {truth_ok}"),
        ]
        for k, v in rows:
            print(f"  {k:16} {v}")
        ok = proc.returncode == 0 and report["result"] == "confirmed" and truth_ok \
            and report.get("intervals_missed") == 0 and report.get("energy_conserved")
        print(f"\n{'DEMO OK' if ok else 'DEMO FAILED'}: meter upgraded live, report in {report_file.relative_to(REPO)}")
        return 0 if ok else 1
    finally:
        subprocess.run([str(BIN / "meterfw-sim"), "stop", "--dir", str(meter_dir)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
