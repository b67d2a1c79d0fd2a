"""Power-cut sweep, in the manner of MCUboot's simulator: count the flash operations of a
whole phase (activation -> trial boot -> confirm, or a revert), then run the phase again once
per operation with the power cut at that operation (cleanly, or tearing it part-way), power on
again and check the invariants. `make powercut` runs every point; `make test` samples them.

Invariants checked after each cut: the meter boots a verified image (not the recovery
console); boot control is consistent (confirmed, no trial left hanging); no good image was
rejected; every interval closed before the phase is still there, unchanged; intervals are
continuous with an exact register chain.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hil.sim import SimBoard
from meterfw.errors import MeterfwError
from meterfw.image import build_image
from meterfw.keys import init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity

PHASES = ("activate", "revert")
_SETTLE_S = 45
# No point takes this long (a revert point is ~10 s): past it the board is stopped, so a point
# that hangs is reported as a violation, with the meter's console, instead of hanging the sweep.
_POINT_S = 180


@dataclass
class Outcome:
    phase: str
    cut_at: int
    torn: bool
    cut_happened: bool
    version: str | None
    violations: list[str] = field(default_factory=list)
    console: str = ""  # the end of the meter's debug console, kept for a violation


class Sweep:
    def __init__(self, work: Path, interval_s: int = 4, seed: int = 5):
        self.work = work
        self.interval_s = interval_s
        self.seed = seed
        self.keys = work / "keys"
        init_keys(self.keys)
        k = load_keys(self.keys)
        self.v1 = work / "v1.mfw"
        self.v2 = work / "v2.mfw"
        self.v1.write_bytes(build_image(FIRMWARE, "sim", "1.0.0", k, build_time=1))
        self.v2.write_bytes(build_image(FIRMWARE, "sim", "1.1.0", k, build_time=1))
        self.secret = k.utility_secret
        self.templates: dict[str, Path] = {}
        self._n = 0
        self._lock = threading.Lock()

    # -- boards -------------------------------------------------------------------------------
    def _meter(self, board: SimBoard) -> Meter:
        return Meter(Link(board.port, timeout_s=2.0), utility_secret=self.secret)

    def _start(self, d: Path, **kw) -> SimBoard:
        return SimBoard.start(d, interval_s=self.interval_s, seed=self.seed, **kw)

    def _copy(self, template: Path) -> Path:
        with self._lock:
            self._n += 1
            d = self.work / f"run{self._n}"
        shutil.copytree(template, d, ignore=shutil.ignore_patterns("state.json", "*.fifo", "*.lock", "tty",
                                                                   "*.log"))
        return d

    def prepare(self) -> None:
        """Templates: v2 downloaded and verified (for activate); v2 confirmed (for revert)."""
        d = self.work / "template-activate"
        board = self._start(d, image=self.v1, keys=self.keys)
        try:
            meter = self._meter(board)
            _wait(lambda: len(meter.read_intervals()) >= 2, 3 * self.interval_s + 20, "two closed intervals")
            meter.upload(self.v2.read_bytes())
            meter.verify()
            meter.link.close()
        finally:
            board.stop()
        self.templates["activate"] = d
        d2 = self._copy(d)
        board = self._start(d2)
        try:
            meter = self._meter(board)
            meter.activate("now")
            self._settle(meter)
            meter.link.close()
        finally:
            board.stop()
        self.templates["revert"] = d2

    def _operate(self, meter: Meter, phase: str) -> None:
        try:
            if phase == "activate":
                meter.activate("now")
            else:
                meter.revert()
        except MeterfwError:
            pass  # the power may go before the reply does

    def _settle(self, meter: Meter) -> dict | None:
        time.sleep(0.5)
        return meter.wait_until(
            lambda s: s.get("mode") == "recovery" or (not s["trial"] and s["update"].get("result") != "trial"
                                                       and s["uptime_s"] >= 2),
            _SETTLE_S)

    # -- the sweep ----------------------------------------------------------------------------
    def count(self, phase: str) -> int:
        board = self._start(self._copy(self.templates[phase]))
        try:
            meter = self._meter(board)
            meter.status()
            before = board.flash_ops()
            self._operate(meter, phase)
            self._settle(meter)
            meter.link.close()
            return board.flash_ops() - before
        finally:
            board.stop()

    def run_point(self, phase: str, cut_at: int, torn: bool) -> Outcome:
        board = self._start(self._copy(self.templates[phase]))
        overran = threading.Event()
        worker = threading.get_ident()
        where: list[str] = []

        def stop_it() -> None:
            # Where this point's thread is stuck, before the stop moves it on.
            frame = sys._current_frames().get(worker)
            if frame is not None:
                where.append("".join(traceback.format_stack(frame)[-6:]))
            overran.set()
            board.stop()

        timer = threading.Timer(_POINT_S, stop_it)
        timer.start()
        try:
            meter = self._meter(board)
            records_before = meter.read_intervals()
            board.cut_at(cut_at, torn)
            self._operate(meter, phase)
            st = self._settle(meter)
            out = Outcome(phase, cut_at, torn, board.state().get("power_cuts", 0) > 0,
                          st.get("active_version") if st else None)
            out.violations = self._check(meter, st, records_before, phase)
            meter.link.close()
        except Exception as e:  # noqa: BLE001 - a point that fails to run is an outcome too
            out = Outcome(phase, cut_at, torn, board.state().get("power_cuts", 0) > 0, None)
            out.violations = [f"the point did not complete: {type(e).__name__}: {e}"]
        finally:
            timer.cancel()
            board.stop()
        if overran.is_set():
            out.violations.insert(0, f"the point ran over {_POINT_S} s; the sweep was waiting in:\n{''.join(where)}")
        if out.violations:
            out.console = _tail(board.dir / "console.log")
        return out

    def _check(self, meter: Meter, st: dict | None, records_before: list[dict], phase: str) -> list[str]:
        if st is None:
            return ["meter did not settle: no answer or a trial left hanging"]
        bad = []
        if st.get("mode") == "recovery":
            bad.append(f"recovery console: {st.get('recovery_reason')}")
            return bad
        if not st["confirmed"] or st["trial"]:
            bad.append("boot control not settled: confirmed=%s trial=%s" % (st["confirmed"], st["trial"]))
        if st["rejected"]:
            bad.append(f"a good image was rejected: {st['rejected']}")
        if st["slots"] != {"a": {"version": "1.0.0"}, "b": {"version": "1.1.0"}}:
            bad.append(f"slots changed: {st['slots']}")
        after = meter.read_intervals()
        if after[:len(records_before)] != records_before:
            bad.append("intervals closed before the cut changed or vanished")
        gaps = continuity(after)
        if gaps["intervals_duplicated"]:
            bad.append(f"duplicated intervals: {gaps}")
        seqs = [r["seq"] for r in after]
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            bad.append("interval sequence numbers are not contiguous")
        for prev, rec in zip(after, after[1:]):
            if rec["register_mwh"] - prev["register_mwh"] != rec["energy_mwh"]:
                bad.append(f"register chain broken at interval {rec['seq']}")
                break
        return bad


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def points(n_ops: int, sample: int | None) -> list[tuple[int, bool]]:
    """Every operation, clean and torn; or `sample` of them spread evenly over the phase."""
    every = [(i, torn) for i in range(1, n_ops + 1) for torn in (False, True)]
    if sample is None or sample >= len(every):
        return every
    step = len(every) / sample
    return [every[int(k * step)] for k in range(sample)]


def _print(o: Outcome) -> None:
    mark = "ok" if not o.violations else "VIOLATION: " + "; ".join(o.violations)
    print(f"  {o.phase:8} cut at op {o.cut_at:3} {'torn ' if o.torn else 'clean'}  -> {o.version}  {mark}",
          flush=True)
    if o.console:
        print("    console: " + o.console.replace("\n", "\n    console: "), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="powercut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, help="cut points per phase (default: every one)")
    ap.add_argument("--phase", choices=PHASES, action="append", help="only this phase (may be repeated)")
    ap.add_argument("--from-op", type=int, default=1, help="only cut points at this operation or later")
    ap.add_argument("--json", help="also write the outcomes to this file")
    ap.add_argument("--jobs", type=int, default=2, help="simulated meters cut in parallel (default 2)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterfw-powercut-") as tmp:
        sweep = Sweep(Path(tmp))
        sweep.prepare()
        rows, outcomes = [], []
        for phase in args.phase or PHASES:
            n = sweep.count(phase)
            results = []
            todo = [pt for pt in points(n, args.sample) if pt[0] >= args.from_op]
            with ThreadPoolExecutor(args.jobs) as pool:
                runs = pool.map(lambda pt: sweep.run_point(phase, *pt), todo)
                for o in runs:
                    results.append(o)
                    _print(o)
            outcomes += results
            rows.append((phase, n, len(results), sum(o.cut_happened for o in results),
                         sum(not o.violations for o in results), sum(bool(o.violations) for o in results)))
    print(f"\n{'phase':10}{'flash ops':>10}{'cut points':>12}{'cuts made':>11}{'recovered':>11}{'violations':>12}")
    for phase, n, pts, made, ok, bad in rows:
        print(f"{phase:10}{n:>10}{pts:>12}{made:>11}{ok:>11}{bad:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.violations for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
