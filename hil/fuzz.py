"""`make fuzz`: the parsers that meet a peer's bytes, fed generated and mutated inputs.

    python -m hil.fuzz [--target NAME ...] [--inputs N] [--seed S] [--json FILE]

Device targets run in the MicroPython unix port with the sim board's heap, one process each that
makes its own inputs (hil/fuzz_device.py): `frames` (bootloader/framing.py's Decoder), `requests`
(a request payload through the session check and the handlers' field parsing) and `image` (the
image header, manifest, admission checks, slot check and the slot's read-only VFS). Host targets
run in CPython (hil/fuzz_host.py): `host_image` (meterfw.image) and `host_reply` (the transport's
reply handling). Every case is a function of the seed and its index (hil/fuzz_gen.py).

Counted per target: inputs; escapes (an exception other than the documented one); wrong results
(an oracle failed: a good frame lost, a valid request or image refused); hangs (an input over
1 s, or a worker silent for --stall seconds: it is killed and resumed after the case it was on);
heap at the start and end (bytes on the device, CPython memory blocks on the host). Each finding's
input is saved under --out. Exit status 1 on any finding or heap growth past the slack.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hil.supervisor.common import _heap_bytes
from meterfw.image import APP_MOUNT, compile_module

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors" / "image"
DEVICE_TARGETS = ("frames", "requests", "image")
HOST_TARGETS = ("host_image", "host_reply")
TARGETS = DEVICE_TARGETS + HOST_TARGETS
# Heap growth that still counts as flat: of the floor (the lowest of the first five samples after
# the warm-up, then of the last five; 20 samples a run). A leak of one 16-byte GC block per input
# passes 4 KiB within 256 inputs; a single sample can be KBs high (the GC scans the stack
# conservatively, and a stale pointer there keeps a finished case's objects), its floor is not.
DEVICE_HEAP_SLACK = 4096  # bytes
HOST_HEAP_SLACK = 2000  # CPython memory blocks (its caches fill in steps of hundreds)
DEFAULT_STALL_S = 30.0
_COUNTS = {"escape": "escapes", "wrong": "wrong", "hang": "hangs"}


def build_lib(out: Path) -> Path:
    """bootloader/, firmware/ and the device side of the harness (hil/fuzz_device.py and
    hil/fuzz_gen.py) compiled as provisioning compiles them (meterfw.image.compile_module: -O3,
    the device's import path as the source name). A host path in every module's name, or a
    script compiled at start-up, made the heap's layout, and so a near-full heap's outcome,
    depend on where the repository was cloned."""
    lib = out / "lib"
    jobs = [(REPO / "hil" / f"{stem}.py", lib / "hil" / f"{stem}.mpy", f"hil/{stem}.mpy")
            for stem in ("fuzz_device", "fuzz_gen")]
    jobs += [(p, lib / "bootloader" / f"{p.stem}.mpy", f"bootloader/{p.stem}.mpy")
             for p in sorted((REPO / "bootloader").glob("*.py"))]
    jobs += [(p, lib / f"{p.stem}.mpy", f"{APP_MOUNT}{p.stem}.mpy") for p in sorted((REPO / "firmware").glob("*.py"))]
    with tempfile.TemporaryDirectory(prefix="meterfw-fuzz-") as tmp:
        for src, dst, name in jobs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(compile_module(src, name, Path(tmp)))
    (lib / "hil" / "__init__.py").write_text("")
    return lib


def build_base_image(out: Path) -> Path:
    """The seed image: tests/vectors/image's tiny image, built and signed here by build_image
    with the test-only keys (reproducible, so every run mutates the same bytes)."""
    spec = importlib.util.spec_from_file_location("image_vectors", VECTORS / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    path = out / "base.mfw"
    path.write_bytes(regen.build())
    return path


def worker_cmd(name: str, n: int, seed: int, start: int, out: Path, lib: Path, image: Path) -> list:
    if name in HOST_TARGETS:
        return [sys.executable, "-u", "-m", "hil.fuzz_host", name, str(n), str(seed), str(out), str(start),
                str(image), str(VECTORS / "keys")]
    # Paths relative to the worker's folder (`out`): their lengths, like the modules' names, would
    # otherwise shift the heap's layout with where the run's folder is.
    micropython = Path(sys.executable).parent / "micropython"
    return [str(micropython), "-X", f"heapsize={_heap_bytes()}", "-m", "hil.fuzz_device", os.path.relpath(lib, out),
            name, str(n), str(seed), ".", str(start), os.path.relpath(image, out)]


def _lines(proc, q):
    for line in proc.stdout:
        q.put(line)
    q.put(None)


def _current_case(out: Path, name: str) -> tuple[int, bytes] | None:
    try:
        raw = (out / f"{name}.cur").read_bytes()
        i, n = struct.unpack_from("<II", raw)
        return i, raw[8:8 + n]
    except (OSError, struct.error):
        return None


def run_target(name: str, n: int, seed: int, out: Path, lib: Path, image: Path,
               stall_s: float = DEFAULT_STALL_S, cmd=worker_cmd) -> dict:
    """Cases 0..n-1 of one target in worker processes: a worker that goes silent for stall_s or
    dies is recorded with the case it was on (a hang, a crash) and the run resumes after it."""
    res = {"target": name, "inputs": 0, "escapes": 0, "wrong": 0, "hangs": 0, "findings": [],
           "heap_start": None, "heap_end": None, "heap_max": None, "restarts": 0}
    t0 = time.monotonic()
    start = 0
    while start < n:
        (out / f"{name}.cur").unlink(missing_ok=True)
        proc = subprocess.Popen(cmd(name, n - start, seed, start, out, lib, image), cwd=out, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "MICROPYPATH": os.path.relpath(lib, out)})  # for -m
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc, q), daemon=True).start()
        end = None
        done = 0
        stray: list = []
        while True:
            try:
                line = q.get(timeout=stall_s)
            except queue.Empty:
                proc.kill()  # our own worker, by its handle
                line = "STALL"
            if line is None or line == "STALL":
                break
            try:
                d = json.loads(line)
            except ValueError:
                stray.append(line.rstrip())  # not ours: a traceback on the way out, say
                continue
            if "kind" in d:
                if d["reproducer"]:
                    d["reproducer"] = str(out / d["reproducer"])
                res[_COUNTS[d["kind"]]] += 1
                res["findings"].append(d)
            elif "done" in d:
                done = d["done"]
            elif d.get("end"):
                end = d
        proc.wait()
        stderr = proc.stderr.read()
        if end is not None:
            res["inputs"] += end["inputs"]
            if res["heap_start"] is None:
                res["heap_start"] = end["heap_start"]
            res["heap_end"] = end["heap_end"]
            res["heap_max"] = max(res["heap_max"] or 0, end["heap_max"])
            res["heap_samples"] = end["samples"]
            break
        # Killed (a stall) or dead (a crash): the case it was on is the finding.
        cur = _current_case(out, name)
        case = cur[0] if cur else start + done
        kind = "hang" if line == "STALL" else "escape"
        path = out / f"{name}-{kind}-{case}.bin"
        if cur:
            path.write_bytes(cur[1])
        what = "no progress for %.0f s" % stall_s if kind == "hang" else \
            "worker died: " + ((stray + stderr.strip().splitlines()) or ["exit %s" % proc.returncode])[-1]
        res[_COUNTS[kind]] += 1
        res["findings"].append({"case": case, "kind": kind, "what": what, "where": "", "reproducer": str(path)})
        res["inputs"] += case + 1 - start
        res["restarts"] += 1
        start = case + 1
    res["wall_s"] = round(time.monotonic() - t0, 1)
    slack = HOST_HEAP_SLACK if name in HOST_TARGETS else DEVICE_HEAP_SLACK
    res["heap_unit"] = "blocks" if name in HOST_TARGETS else "bytes"
    res["heap_flat"] = res["heap_start"] is not None and res["heap_end"] - res["heap_start"] <= slack
    res["heap_slack"] = slack
    return res


def failed(res: dict) -> bool:
    return bool(res["escapes"] or res["wrong"] or res["hangs"] or not res["heap_flat"])


def table(results: list) -> str:
    rows = [("target", "inputs", "escapes", "wrong", "hangs", "heap start -> end", "flat", "wall s")]
    for r in results:
        heap = "-" if r["heap_start"] is None else f"{r['heap_start']} -> {r['heap_end']} {r['heap_unit']}"
        rows.append((r["target"], str(r["inputs"]), str(r["escapes"]), str(r["wrong"]), str(r["hangs"]), heap,
                     "yes" if r["heap_flat"] else "NO", f"{r['wall_s']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", choices=TARGETS, help="a target (repeatable; default all)")
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "fuzz", help="work folder and reproducers")
    ap.add_argument("--stall", type=float, default=DEFAULT_STALL_S, help="seconds of silence that make a hang")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    lib = build_lib(out)
    image = build_base_image(out)
    t0 = time.monotonic()
    results = []
    for name in args.target or TARGETS:
        print(f"fuzz: {name}: {args.inputs} inputs, seed {args.seed} ...", flush=True)
        res = run_target(name, args.inputs, args.seed, out, lib, image, args.stall)
        for f in res["findings"][:20]:
            print(f"  case {f['case']}: {f['kind']} {f['what']} {f['where']} -> {f['reproducer']}", flush=True)
        results.append(res)
    print(table(results))
    print(f"total {time.monotonic() - t0:.0f} s; reproducers and the case under way in {out}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
