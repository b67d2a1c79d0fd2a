"""Power-cut sweep, in the manner of MCUboot's simulator: count the flash operations of a
whole phase (activation -> trial boot -> confirm, or a revert), then run the phase again once
per operation with the power cut at that operation (cleanly, or tearing it part-way), power on
again and check the invariants. `make powercut` runs every point; `make test` samples them.

It runs on the simulated meter (the default) or on the emulated Pico (`--board pico`: the
stock MicroPython firmware in rp2040js, whose flash operations go through the real rp2 flash
driver and the boot ROM, counted and cut by the emulator in the same way).

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

from hil.pytest_plugin import PICO_INTERVAL_S, PICO_TIMEOUT_S
from hil.sim import SimBoard
from hil.supervisor import NO_FIRMWARE, SimError, default_firmware
from meterfw.errors import MeterfwError, TransportError
from meterfw.image import build_image
from meterfw.keys import init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity

PHASES = ("activate", "revert")
BOARDS = ("sim", "pico")
_SETTLE_S = 45
_UP_S = 6  # a meter answers this soon after a power-on
_QUIET_S = 1.0  # a booted meter's flash rests this long (interval closes aside)
# No point takes this long (a revert point is ~10 s): past it the board is stopped, so a point
# that hangs is reported as a violation, with the meter's console, instead of hanging the sweep.
_POINT_S = 180
# The emulated Pico computes 4-7x slower than a Pico (more on a loaded machine) and boots in
# several seconds of wall time: its waits are this much longer, its replies get the rig's
# PICO_TIMEOUT_S (a phase's, PICO_PHASE_REPLY_S), and its intervals are longer so that a boot
# falls within one.
PICO_SLOWER = 5
PICO_PHASE_REPLY_S = 10.0


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
    def __init__(self, work: Path, interval_s: int | None = None, seed: int = 5, board: str = "sim",
                 firmware: Path | str | None = None):
        """`board="pico"` sweeps the emulated Pico running `firmware` (default: the rig's,
        hil.supervisor.default_firmware()); without one it raises SimError(NO_FIRMWARE)."""
        if board not in BOARDS:
            raise ValueError(f"board must be one of {BOARDS}, not {board!r}")
        self.work = work
        self.board = board
        self.pico = board == "pico"
        self.firmware = None
        if self.pico:
            self.firmware = Path(firmware) if firmware else default_firmware()
            if self.firmware is None:
                raise SimError(NO_FIRMWARE, 2)
            if not self.firmware.is_file():
                raise SimError(f"Pico firmware {self.firmware} not found", 2)
        self.slower = PICO_SLOWER if self.pico else 1
        self.interval_s = interval_s or (PICO_INTERVAL_S if self.pico else 4)
        self.seed = seed
        self.point_s = _POINT_S * self.slower
        self.reply_s = PICO_TIMEOUT_S if self.pico else 2.0  # the templates' (a signature check)
        # A phase's replies, shorter: one the power cut took is waited for this long before the
        # request goes again, to the meter that has since booted.
        self.phase_reply_s = PICO_PHASE_REPLY_S if self.pico else 2.0
        # A status polled while the meter settles waits 1 s; on the Pico, where one can take
        # longer, the same frame goes again each second (a late reply to any of them counts).
        self.resends = 2 * self.slower - 1 if self.pico else 0
        self.keys = work / "keys"
        init_keys(self.keys)
        k = load_keys(self.keys)
        self.v1 = work / "v1.mfw"
        self.v2 = work / "v2.mfw"
        self.v1.write_bytes(build_image(FIRMWARE, board, "1.0.0", k, build_time=1))
        self.v2.write_bytes(build_image(FIRMWARE, board, "1.1.0", k, build_time=1))
        self.secret = k.utility_secret
        self.templates: dict[str, Path] = {}
        self.counts: dict[str, int] = {}  # flash operations per phase, once counted
        self._off_since: dict[Path, float] = {}  # when each template's power went off
        self._n = 0
        self._lock = threading.Lock()

    # -- boards -------------------------------------------------------------------------------
    def _meter(self, board: SimBoard, timeout_s: float | None = None) -> Meter:
        return Meter(Link(board.port, timeout_s=timeout_s or self.reply_s), utility_secret=self.secret)

    def _start(self, d: Path, **kw) -> SimBoard:
        if self.pico:
            kw.update(board="pico", firmware=self.firmware, defaults={})
        return SimBoard.start(d, interval_s=self.interval_s, seed=self.seed, **kw)

    def _copy(self, template: Path) -> Path:
        with self._lock:
            self._n += 1
            d = self.work / f"run{self._n}"
        shutil.copytree(template, d, ignore=shutil.ignore_patterns("state.json", "*.fifo", "*.lock", "tty",
                                                                   "*.log"))
        if self.pico:
            _rewind_rtc(d, time.time() - self._off_since[template])
        return d

    def _stop(self, board: SimBoard, template: Path) -> None:
        board.stop()
        self._off_since[template] = time.time()

    def prepare(self) -> None:
        """Templates: v2 downloaded and verified (for activate); v2 confirmed (for revert). The
        second is made by running the activate phase from the first, which counts it too."""
        d = self.work / "template-activate"
        board = self._start(d, image=self.v1, keys=self.keys)
        try:
            meter = self._meter(board)
            self._up(meter, board)
            _wait(lambda: len(meter.read_intervals()) >= 2, 3 * self.interval_s + 20 * self.slower,
                  "two closed intervals")
            meter.upload(self.v2.read_bytes())
            meter.verify()
            meter.link.close()
        finally:
            self._stop(board, d)
        self.templates["activate"] = d
        d2 = self._copy(d)
        board = self._start(d2)
        try:
            meter = self._meter(board)
            self._up(meter, board)
            before = board.flash_ops()
            meter.activate("now")
            self._settle(meter)
            meter.link.close()
            self.counts["activate"] = board.flash_ops() - before
        finally:
            self._stop(board, d2)
        self.templates["revert"] = d2

    def _operate(self, meter: Meter, phase: str) -> None:
        try:
            if phase == "activate":
                meter.activate("now")
            else:
                meter.revert()
        except MeterfwError:
            pass  # the power may go before the reply does

    def _up(self, meter: Meter, board: SimBoard) -> None:
        """Wait until the meter has booted: it answers (a request sent while it boots is lost,
        so the same frame goes again each second), its post-boot checks are done and its flash
        is quiet. It answers before the intervals its power-off spanned are closed and its boot
        is recorded, and those flash operations are not the phase's: counted in the phase, or
        cut, they would move its cut points, more on the Pico where a boot takes seconds."""
        st = meter.status(timeout_s=1.0, retries=_UP_S * self.slower)
        deadline = time.monotonic() + _SETTLE_S * self.slower
        while st.get("health") is None and st.get("mode") != "recovery" and time.monotonic() < deadline:
            time.sleep(0.5)
            st = meter.status(timeout_s=1.0, retries=_UP_S * self.slower)
        ops, quiet_since = board.flash_ops(), time.monotonic()
        while time.monotonic() - quiet_since < _QUIET_S and time.monotonic() < deadline:
            time.sleep(0.2)
            now = board.flash_ops()
            if now != ops:
                ops, quiet_since = now, time.monotonic()

    def _settle(self, meter: Meter) -> dict | None:
        """The status once the meter is up and no trial is left, through its resets; None if it
        does not get there. Polled like Meter.wait_until, with resends on the Pico, where a
        status can take over a second (Meter.wait_until waits 1 s)."""
        time.sleep(0.5)
        deadline = time.monotonic() + _SETTLE_S * self.slower
        while time.monotonic() < deadline:
            try:
                s = meter.status(timeout_s=1.0, retries=self.resends)
                if s.get("mode") == "recovery" or (not s["trial"] and s["update"].get("result") != "trial"
                                                   and s["uptime_s"] >= 2):
                    return s
            except TransportError:
                try:
                    meter.link.reopen()
                except TransportError:
                    pass
            time.sleep(0.5)
        return None

    # -- the sweep ----------------------------------------------------------------------------
    def count(self, phase: str) -> int:
        """The flash operations of the phase, from its template (the activate phase is counted
        by prepare)."""
        if phase in self.counts:
            return self.counts[phase]
        board = self._start(self._copy(self.templates[phase]))
        try:
            meter = self._meter(board, self.phase_reply_s)
            self._up(meter, board)
            before = board.flash_ops()
            self._operate(meter, phase)
            self._settle(meter)
            meter.link.close()
            self.counts[phase] = board.flash_ops() - before
            return self.counts[phase]
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

        timer = threading.Timer(self.point_s, stop_it)
        timer.start()
        try:
            meter = self._meter(board, self.phase_reply_s)
            self._up(meter, board)
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
            out.violations.insert(0, f"the point ran over {self.point_s} s; the sweep was waiting in:\n{''.join(where)}")
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


def _rewind_rtc(d: Path, off_s: float) -> None:
    """Set the RTC of a copy (its battery-backed correction, DIR/rtc.json) back by the time its
    template has been off, so the copy powers on as if it had just been switched off. Otherwise
    its first boot closes every interval the template's power-off spanned, ~0.1 s each on the
    emulated Pico: minutes per point late in a sweep of 5 s intervals (and as many more records
    to read). Only the meter's clock moves; its records stay continuous."""
    rtc = d / "rtc.json"
    adjust_ms = json.loads(rtc.read_text()).get("adjust_ms", 0) if rtc.exists() else 0
    rtc.write_text(json.dumps({"adjust_ms": adjust_ms - int(off_s * 1000)}))


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
    ap.add_argument("--jobs", type=int, help="meters cut in parallel (default 2 sims, or 1 emulated Pico: "
                                              "each keeps a core busy)")
    ap.add_argument("--board", choices=BOARDS, default="sim",
                    help="sim (the simulated meter, default) or pico (the stock MicroPython firmware on an "
                         "emulated RP2040)")
    ap.add_argument("--firmware", help="pico: the MicroPython RPI_PICO UF2 (default $PICO_FIRMWARE, or the rig's)")
    args = ap.parse_args(argv)
    if args.firmware and args.board != "pico":
        ap.error("--firmware is for --board pico")
    jobs = args.jobs or (1 if args.board == "pico" else 2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meterfw-powercut-") as tmp:
        try:
            sweep = Sweep(Path(tmp), board=args.board, firmware=args.firmware)
            sweep.prepare()
        except SimError as e:  # no firmware or boot ROM, or the emulator not installed
            print(f"powercut: {e}", file=sys.stderr)
            return e.code
        rows, outcomes = [], []
        for phase in args.phase or PHASES:
            n = sweep.count(phase)
            results = []
            todo = [pt for pt in points(n, args.sample) if pt[0] >= args.from_op]
            with ThreadPoolExecutor(jobs) as pool:
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
    print(f"\n{args.board}: {time.monotonic() - started:.0f} s wall time")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.violations for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
