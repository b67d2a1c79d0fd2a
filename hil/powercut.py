"""Power-cut sweep, in the manner of MCUboot's simulator: count the flash operations of each phase
of an upgrade, then run the phase again once per operation with the power cut at that operation
(cleanly, or tearing it part-way), let the meter boot and the host carry on, and check the
invariants. `make powercut` runs every point; `make test` samples them.

Phases, each from a template (a meter's flash and RTC as the phase finds them) and bounded by its
own end:
  download         v2 into the inactive slot from scratch, to the last block's reply; after the
                   cut the host resumes
  delta-download   the same for a delta: v1 with one module changed, each block made by the meter
                   from its recipe and the running v1; after the cut the host resumes the delta
  verify           to the verify's reply; after the cut the host verifies again
  activate         activation "now", to the switch (the reboot into the trial)
  trial            the trial boot, to its health check's front-end settle (the pause of ~1.1 s
                   in flash activity after the boot's own writes)
  confirm          the health verdict and the confirmation, until the meter reports it and its
                   flash rests
  revert           a revert of the confirmed v2, to the old image booted, healthy and resting
  recovery-upload  v2 through the bootloader's recovery console (the active slot's image fails at
                   import), to the last block's reply; after the cut the host resumes
  bootloader-download  a new bootloader (0.2.0) into its staging file, to the last block's
                   reply; after the cut the host resumes
  bootloader-activate  its activation "now": the install into the other copy, the first stage's
                   trial boot of it, the health check and the bootloader's confirmation, until the
                   meter reports it and its flash rests

No interval closes inside a phase: the meter meters 900 s intervals, and every point powers on at
the template's next interval boundary plus a few seconds (its RTC is set so while it is off), so
two counts agree and a cut point is the same operation in every run.

A point costs a power cycle of a board that is already running, not a new process: the board is
switched off, its flash image and RTC restored from the template, switched on. A pool of boards
(one per job) takes points from a queue. A point that does not settle within its deadline is a
violation, with the meter's console.

Invariants checked after each cut: the meter boots a verified image (not the recovery console,
but for recovery-upload, which must come back to it); boot control is settled (confirmed, no
trial left hanging, for the images and for the bootloader); no good image was rejected; the
running bootloader copy is whole (the factory copy as it was, or the new one file for file as its
image has it); every interval closed before the phase is still
there, unchanged; intervals are continuous with an exact register chain. A download (and a
recovery upload) resumes from the first block not yet transferred: not before the last 64 KiB
commit the host saw acknowledged, not past what the meter had acknowledged plus the window it was
writing; it finishes, verifies, and the slot file is byte-identical to the image.

It runs on the simulated meter (the default) or on the emulated Pico (`--board pico`: the stock
MicroPython firmware in rp2040js, whose flash operations go through the real rp2 flash driver and
the boot ROM, counted and cut by the emulator in the same way).
"""
from __future__ import annotations

import argparse
import os
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from littlefs import LittleFS

from hil.pytest_plugin import PICO_TIMEOUT_S, build_changed, build_variants
from hil.sim import SimBoard
from hil.supervisor import NO_FIRMWARE, REPO, SimError, default_firmware
from meterfw import protocol as P
from meterfw.errors import MeterfwError, TransportError
from meterfw.delta import Delta, build as build_delta
from meterfw.image import Image, build_image
from meterfw.keys import init_keys, load_keys
from meterfw.paths import BOOTLOADER, FIRMWARE
from meterfw.provision import LFS_CONFIG, flash_geometry
from meterfw.session import Meter
from meterfw.transport import Link
from meterfw.upgrade import continuity

PHASES = ("download", "delta-download", "verify", "activate", "trial", "confirm", "revert", "recovery-upload",
          "bootloader-download", "bootloader-activate")
CHAIN = ("activate", "trial", "confirm")  # one run, cut into three by its reboot and its pause
TEMPLATE = {"download": "download", "delta-download": "download", "verify": "verify", "activate": "activate",
            "trial": "activate", "confirm": "activate", "revert": "revert", "recovery-upload": "recovery",
            "bootloader-download": "download", "bootloader-activate": "bootloader"}
UPLOADS = ("download", "delta-download", "recovery-upload", "bootloader-download")
SWITCHES = ("revert", "bootloader-activate")  # one operation, then a reboot and a settle
# Where an upload lands on the meter.
_UPLOAD_PATH = {"download": "/slots/b.mfw", "delta-download": "/slots/b.mfw", "recovery-upload": "/slots/b.mfw",
                "bootloader-download": "/boot/bootloader.mfw"}
NEW_BOOTLOADER = "0.2.0"
BOARDS = ("sim", "pico")
INTERVAL_S = 900  # longer than any phase: none closes inside one
_START_AFTER_BOUNDARY_MS = 3000
# What a board keeps across power-offs besides its sim.json: restored from the template.
_KEPT = ("flash.img", "relay.json", "rigclock.json")
_RTC = "rtc.json"
_SETTLE_S = 45
_UP_S = 6  # a meter answers this soon after a power-on
_QUIET_S = 0.5  # a booted meter's flash rests this long before a phase starts
_TRIAL_PAUSE_S = 0.8  # the trial boot's health check waits 1.1 s for the front-end
_SYNC_BYTES = 65536  # the meter commits the slot file this often (bootloader/transfer.py)
# No point takes this long (a point is a few seconds): past it the board is stopped, so a point
# that hangs is reported as a violation, with the meter's console, instead of hanging the sweep.
_POINT_S = 120
# The emulated Pico computes 4-7x slower than a Pico (more on a loaded machine) and boots in
# several seconds of wall time: its waits are this much longer, its replies get the rig's
# PICO_TIMEOUT_S (a phase's, PICO_PHASE_REPLY_S).
PICO_SLOWER = 5
# Sims side by side: two a core, as a point spends over half its time waiting (the meter's
# post-boot health check waits 1.1 s for its front-end, twice a point).
_SIM_JOBS = 2 * (os.cpu_count() or 1)
PICO_PHASE_REPLY_S = 10.0


@dataclass
class Outcome:
    phase: str
    cut_at: int
    torn: bool
    cut_happened: bool
    version: str | None
    violations: list[str] = field(default_factory=list)
    console: str = ""  # the meter's debug console during the point, kept for a violation
    resumed_from_block: int | None = None  # an upload's resume point after the cut
    bootloader: dict | None = None  # the bootloader the meter runs after it (status' "bootloader")
    seconds: float = 0.0


@dataclass
class Template:
    dir: Path
    clock_ms: int | None  # the meter's clock when it was switched off (None: it does not meter)
    wall_s: float  # ... and the host's
    adjust_ms: int  # its RTC's stored correction then


class _Cut(Exception):
    pass


class _WatchedLink(Link):
    """A link that gives up as soon as the power is cut (`cut()` says so), instead of waiting
    out a window's replies that will never come."""
    cut = None
    _checked = 0.0

    def _read(self) -> bytes:
        now = time.monotonic()
        if self.cut is not None and now - self._checked >= 0.02:
            self._checked = now
            if self.cut():
                self.cut = None
                raise _Cut()
        return super()._read()


class Sweep:
    def __init__(self, work: Path, seed: int = 5, board: str = "sim", firmware: Path | str | None = None,
                 jobs: int | None = None):
        """`board="pico"` sweeps the emulated Pico running `firmware` (default: the rig's,
        hil.supervisor.default_firmware()); without one it raises SimError(NO_FIRMWARE).
        `jobs` boards run points side by side (default two sims a core, or 1 emulated Pico)."""
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
        self.jobs = jobs or (1 if self.pico else _SIM_JOBS)
        self.slower = PICO_SLOWER if self.pico else 1
        self.interval_s = INTERVAL_S
        self.seed = seed
        self.point_s = _POINT_S * self.slower
        self.reply_s = PICO_TIMEOUT_S if self.pico else 2.0  # the templates' (a signature check)
        # A phase's replies, shorter: one the power cut took is waited for this long before the
        # request goes again, to the meter that has since booted. An upload's get the full wait:
        # its initiate checks the image's signatures (tens of seconds on a loaded emulator), and
        # the link gives up on its own when the power goes (_WatchedLink).
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
        self.v2_image = Image.read(self.v2)  # parsed once; every upload of it takes this object
        self.v2_bytes = self.v2_image.data
        # A one-module fix of v1, sent as a delta against the v1 the meter runs.
        self.fix_image = Image.read(build_changed(work, board, self.keys, "1.1.0", 1))
        self.delta = build_delta(Image.read(self.v1), self.fix_image)
        bootloader = work / "bootloader.mfw"
        bootloader.write_bytes(build_image(BOOTLOADER, board, NEW_BOOTLOADER, k, kind="bootloader", build_time=1))
        self.bootloader_image = Image.read(bootloader)
        self.factory_copy: dict[str, bytes] | None = None  # /bl/a as provisioning wrote it
        self.window_bytes = json.loads((REPO / "boards" / board / "board.json").read_text())[
            "transfer_window_bytes"]
        self.secret = k.utility_secret
        self.templates: dict[str, Template] = {}
        self.counts: dict[str, int] = {}  # flash operations per phase, once counted
        self.offsets: dict[str, int] = {}  # a chain phase's first operation within the chain
        self._boards: queue.Queue[SimBoard] = queue.Queue()
        self._all: list[SimBoard] = []
        self._console_at: dict[Path, int] = {}

    # -- boards -------------------------------------------------------------------------------
    def _meter(self, board: SimBoard, timeout_s: float | None = None) -> Meter:
        return Meter(_WatchedLink(board.port, timeout_s=timeout_s or self.reply_s), utility_secret=self.secret)

    def _start(self, d: Path, **kw) -> SimBoard:
        if self.pico:
            kw.update(board="pico", firmware=self.firmware, defaults={})
        board = SimBoard.start(d, interval_s=self.interval_s, seed=self.seed, **kw)
        self._all.append(board)
        return board

    def close(self) -> None:
        for board in self._all:
            board.stop()

    @contextmanager
    def _board(self):
        board = self._boards.get()
        try:
            yield board
        finally:
            self._boards.put(board)

    def _clock_ms(self, meter: Meter) -> int:
        return meter.status(timeout_s=1.0, retries=_UP_S * self.slower)["time_s"] * 1000 + 500

    @staticmethod
    def _adjust_ms(d: Path) -> int:
        rtc = d / _RTC
        return json.loads(rtc.read_text()).get("adjust_ms", 0) if rtc.exists() else 0

    def _set_clock(self, board: SimBoard, now_ms: int, to_ms: int) -> None:
        """While the board is off: its RTC reads `to_ms` where it read `now_ms`."""
        (board.dir / _RTC).write_text(json.dumps({"adjust_ms": self._adjust_ms(board.dir) + to_ms - now_ms}))

    def _next_boundary_ms(self, clock_ms: int) -> int:
        iv_ms = self.interval_s * 1000
        return (clock_ms // iv_ms + 1) * iv_ms + _START_AFTER_BOUNDARY_MS

    def _snapshot(self, board: SimBoard, meter: Meter | None, name: str) -> None:
        """Switch the board off and keep what it holds as the template `name`."""
        clock_ms = self._clock_ms(meter) if meter is not None else None
        wall_s = time.time()
        board.power_off()
        d = self.work / f"template-{name}"
        d.mkdir()
        for f in (*_KEPT, _RTC, "sim.json"):  # sim.json: the same for every board (their front-ends agree)
            if (board.dir / f).exists():
                shutil.copyfile(board.dir / f, d / f)
        self.templates[name] = Template(d, clock_ms, wall_s, self._adjust_ms(board.dir))

    def _restore(self, board: SimBoard, name: str) -> None:
        """Power off, put the template's flash and RTC back, power on: the template's meter
        switched on at its next interval boundary (plus a few seconds)."""
        t = self.templates[name]
        board.power_off()
        for f in _KEPT:
            if (t.dir / f).exists():
                shutil.copyfile(t.dir / f, board.dir / f)
            elif (board.dir / f).exists():
                (board.dir / f).unlink()
        adjust = t.adjust_ms
        if t.clock_ms is not None:
            adjust += self._next_boundary_ms(t.clock_ms) - t.clock_ms - int((time.time() - t.wall_s) * 1000)
        (board.dir / _RTC).write_text(json.dumps({"adjust_ms": adjust}))
        try:
            self._console_at[board.dir] = (board.dir / "console.log").stat().st_size
        except OSError:
            self._console_at[board.dir] = 0
        board.power_on()

    def _jump(self, board: SimBoard, meter: Meter) -> None:
        """Off, and on again at the next interval boundary: the boot closes the interval."""
        now = self._clock_ms(meter)
        board.power_off()
        self._set_clock(board, now, self._next_boundary_ms(now))
        board.power_on()
        self._up(meter, board)

    def prepare(self) -> None:
        """The templates, made on the first boards of the pool (which then join it): a v1 meter
        with two closed intervals (for download); v2 downloaded (verify); v2 verified (the
        activate chain); v2 confirmed (revert); and, on a second board, a meter whose active
        image fails at import, in its recovery console (recovery-upload)."""
        errors: list[BaseException] = []

        def recovery() -> None:
            try:
                self._prepare_recovery()
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                errors.append(e)

        board = self._start(self.work / "board1", image=self.v1, keys=self.keys)
        meter = self._meter(board)
        self._up(meter, board)
        self._jump(board, meter)
        self._jump(board, meter)
        self._snapshot(board, meter, "download")
        second = threading.Thread(target=recovery)
        second.start()
        try:
            board.power_on()
            self._up(meter, board)
            meter.upload(self.v2_image)
            self._snapshot(board, meter, "verify")
            board.power_on()
            self._up(meter, board)
            meter.verify()
            self._snapshot(board, meter, "activate")
            board.power_on()
            self._up(meter, board)
            self._operate(meter, board, "activate", cut=False)
            if self._settle(meter) is None:
                raise SimError(f"the template meter did not confirm v2:\n{_tail(board.dir / 'console.log')}")
            self._snapshot(board, meter, "revert")
            # A new bootloader downloaded and verified, from the download template.
            self._restore(board, "download")
            self._up(meter, board)
            meter.upload(self.bootloader_image)
            meter.verify()
            self._snapshot(board, meter, "bootloader")
            self.factory_copy = _read_tree(self.templates["bootloader"].dir / "flash.img", self.board, "/bl/a")
            meter.link.close()
        finally:
            second.join()
        self._boards.put(board)
        if errors:
            raise errors[0]

    def _prepare_recovery(self) -> None:
        d = self.work / "board2"
        d.mkdir()
        t = self.templates["download"]
        for f in (*_KEPT, _RTC, "sim.json"):
            if (t.dir / f).exists():
                shutil.copyfile(t.dir / f, d / f)
        crash = build_variants(self.work / "variants", self.board, self.keys, ("crash_at_import",))
        _write_slot(d / "flash.img", self.board, "/slots/a.mfw", crash["crash_at_import"].read_bytes())
        board = self._start(d)
        meter = self._meter(board)
        if meter.wait_until(lambda s: s.get("mode") == "recovery", 120 * self.slower) is None:
            raise SimError(f"no recovery console:\n{_tail(d / 'console.log')}")
        self._up(meter, board)
        meter.link.close()
        self._snapshot(board, None, "recovery")
        if self.jobs > 1:
            self._boards.put(board)
        for i in range(3, self.jobs + 1):
            d = self.work / f"board{i}"
            d.mkdir()
            for f in (*_KEPT, _RTC, "sim.json"):
                if (t.dir / f).exists():
                    shutil.copyfile(t.dir / f, d / f)
            self._boards.put(self._start(d))

    def _up(self, meter: Meter, board: SimBoard) -> None:
        """Wait until the meter has booted: it answers (a request sent while it boots is lost,
        so the same frame goes again each second), its post-boot checks are done and its flash
        is quiet. It answers before the intervals its power-off spanned are closed and its boot
        is recorded, and those flash operations are not the phase's: counted in the phase, or
        cut, they would move its cut points."""
        st = meter.status(timeout_s=1.0, retries=_UP_S * self.slower)
        deadline = time.monotonic() + _SETTLE_S * self.slower
        while st.get("health") is None and st.get("mode") != "recovery" and time.monotonic() < deadline:
            time.sleep(0.1)
            st = meter.status(timeout_s=1.0, retries=_UP_S * self.slower)
        ops, quiet_since = board.flash_ops(), time.monotonic()
        while time.monotonic() - quiet_since < _QUIET_S * self.slower and time.monotonic() < deadline:
            time.sleep(0.1)
            now = board.flash_ops()
            if now != ops:
                ops, quiet_since = now, time.monotonic()

    def _answers(self, meter: Meter) -> dict:
        """The first status after a reset, through the boot (requests sent meanwhile are lost)."""
        try:
            return meter.status(timeout_s=1.0, retries=_UP_S * self.slower)
        except TransportError:
            meter.link.reopen()
            return meter.status(timeout_s=1.0, retries=_UP_S * self.slower)

    def _settle(self, meter: Meter) -> dict | None:
        """The status once the meter is up, no trial is left and its post-boot checks are done,
        through its resets; None if it does not get there."""
        deadline = time.monotonic() + _SETTLE_S * self.slower
        while time.monotonic() < deadline:
            try:
                s = meter.status(timeout_s=1.0, retries=self.resends)
                if s.get("mode") == "recovery" or (not s["trial"] and s["update"].get("result") != "trial"
                                                   and not (s.get("bootloader") or {}).get("trial")
                                                   and s.get("health") is not None):
                    return s
            except TransportError:
                try:
                    meter.link.reopen()
                except TransportError:
                    pass
            time.sleep(0.2)
        return None

    def _upload(self, phase: str) -> Image | Delta:
        return {"bootloader-download": self.bootloader_image, "delta-download": self.delta}.get(phase, self.v2_image)

    def _target(self, phase: str) -> Image:
        """The image an upload phase leaves on the meter (a delta's is the image it makes)."""
        return self.fix_image if phase == "delta-download" else self._upload(phase)

    def _phase_meter(self, board: SimBoard, phase: str) -> Meter:
        return self._meter(board, self.reply_s if phase in UPLOADS else self.phase_reply_s)

    def _operate(self, meter: Meter, board: SimBoard, phase: str,
                 cut: bool = True) -> tuple[int | None, Exception | None]:
        """Run the phase's operation and, for one that reboots the meter, wait for the reboot.
        Returns, for an upload, the bytes the meter had acknowledged when the power went (None: not
        even the initiate), and what the operation raised. Without a `cut`, a failure raises."""
        acked: list[int | None] = [None]
        boots = board.state().get("boots", 0)
        try:
            if phase in UPLOADS:
                meter.upload(self._upload(phase), progress=lambda done, total: acked.__setitem__(0, done))
            elif phase == "verify":
                meter.verify()
            elif phase in CHAIN or phase == "bootloader-activate":
                meter.activate("now")
            else:
                meter.revert()
            if phase in CHAIN or phase in SWITCHES:
                _wait(lambda: board.state().get("boots", 0) > boots, _SETTLE_S * self.slower, "the switch")
        except (MeterfwError, _Cut) as e:
            if not cut:
                raise
            # The power may go before the reply does; if it never goes, this says why.
            return acked[0], e
        return acked[0], None

    # -- the sweep ----------------------------------------------------------------------------
    def count(self, phase: str, again: bool = False) -> int:
        """The flash operations of the phase, from its template to its own end. `again` counts
        afresh."""
        if phase in self.counts and not again:
            return self.counts[phase]
        with self._board() as board:
            self._restore(board, TEMPLATE[phase])
            meter = self._phase_meter(board, phase)
            try:
                self._up(meter, board)
                before = board.flash_ops()
                self._operate(meter, board, phase, cut=False)
                if phase in CHAIN or phase in SWITCHES:
                    if self._settle(meter) is None:
                        raise SimError(f"{phase}: the meter did not settle:\n{_tail(board.dir / 'console.log')}")
                    self._up(meter, board)
                total = board.flash_ops() - before
                st = board.state()  # as the flash_ops() just now wrote it
                if phase in CHAIN:
                    switch = [n for n in st["boot_ops"] if n > before]
                    pause = [n for n, gap in st["pauses"] if switch and n > switch[0] and gap >= _TRIAL_PAUSE_S]
                    if len(switch) != 1 or not pause:
                        raise SimError(f"activate: expected one reboot and the trial's pause: boots at {switch}, "
                                       f"pauses {st['pauses']}")
                    bounds = {"activate": (0, switch[0] - before), "trial": (switch[0] - before, pause[0] - before),
                              "confirm": (pause[0] - before, total)}
                    for name, (lo, hi) in bounds.items():
                        self.offsets[name], self.counts[name] = lo, hi - lo
                    return self.counts[phase]
                self.offsets[phase], self.counts[phase] = 0, total
                return total
            finally:
                meter.link.close()
                board.power_off()

    def run_point(self, phase: str, cut_at: int, torn: bool) -> Outcome:
        self.count(phase)
        with self._board() as board:
            return self._point(board, phase, cut_at, torn)

    def _point(self, board: SimBoard, phase: str, cut_at: int, torn: bool) -> Outcome:
        t0 = time.monotonic()
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
        out = Outcome(phase, cut_at, torn, False, None)
        meter = None
        try:
            self._restore(board, TEMPLATE[phase])
            meter = self._phase_meter(board, phase)
            self._up(meter, board)
            records_before = meter.read_intervals() if phase != "recovery-upload" else []
            cuts0 = board.state().get("power_cuts", 0)
            board.cut_at(self.offsets[phase] + cut_at, torn)
            meter.link.cut = lambda: board.state().get("power_cuts", 0) > cuts0
            acked, failed = self._operate(meter, board, phase)
            meter.link.cut = None
            _wait(lambda: board.state().get("power_cuts", 0) > cuts0, 20 * self.slower,
                  "the power cut (the phase did fewer operations than counted; the operation "
                  f"ended with {type(failed).__name__}: {failed})")
            out.cut_happened = True
            meter.drop_session()
            self._answers(meter)
            if phase in UPLOADS:
                out.violations += self._resume(meter, acked, out)
            if phase == "verify":
                meter.verify()
            st = self._settle(meter)
            out.version = st.get("active_version") if st else None
            out.bootloader = (st or {}).get("bootloader")
            out.violations += self._check(meter, st, records_before, phase)
        except Exception as e:  # noqa: BLE001 - a point that fails to run is an outcome too
            out.violations.append(f"the point did not complete: {type(e).__name__}: {e}")
        finally:
            timer.cancel()
            if meter is not None:
                meter.link.close()
        if overran.is_set():
            out.violations.insert(0, f"the point ran over {self.point_s} s; the sweep was waiting in:\n{''.join(where)}")
            board.stop()
            self._all.remove(board)
            fresh = self._start(board.dir)
            board.__dict__.update(fresh.__dict__)  # the pool keeps its board, now a running one
            self._all[-1] = board
        else:
            board.power_off()
            if phase in UPLOADS and not out.violations:
                slot = _read_slot(board.dir / "flash.img", self.board, _UPLOAD_PATH[phase])
                if slot != self._target(phase).data:
                    out.violations.append(f"the slot is not the image: {len(slot)} bytes, differing")
            if not out.violations and out.bootloader is not None:
                out.violations += self._check_copy(board.dir / "flash.img", out.bootloader)
        if out.violations:
            out.console = _tail(board.dir / "console.log", since=self._console_at.get(board.dir, 0))
        out.seconds = round(time.monotonic() - t0, 2)
        return out

    def _resume(self, meter: Meter, acked: int | None, out: Outcome) -> list[str]:
        """After a cut in an upload: where the meter says to go on from, then the rest of it."""
        bad = []
        st = meter.update_state()
        image = self._upload(out.phase)
        size = len(self._target(out.phase).data)
        if st.get("status") == P.INITIATED and st.get("image_id") == image.image_id.hex():
            bs = st["block_size"]
            resume = min(st["first_not_transferred_block"] * bs, size)
            out.resumed_from_block = st["first_not_transferred_block"]
            if acked is not None:
                committed = acked if acked == size else acked // _SYNC_BYTES * _SYNC_BYTES
                if resume < committed:
                    bad.append(f"resumes from byte {resume}, before the commit at {committed} (acknowledged {acked})")
                if resume > min(acked + self.window_bytes, size):
                    bad.append(f"resumes from byte {resume}, past what was sent ({acked} acknowledged, "
                               f"a window of {self.window_bytes})")
        elif acked is not None:
            bad.append(f"the transfer was lost: update state {st.get('status')} after {acked} bytes acknowledged")
        r = meter.upload(image)
        if out.resumed_from_block is not None and r["resumed_from_block"] != out.resumed_from_block:
            bad.append(f"the host resumed from block {r['resumed_from_block']}, the meter said "
                       f"{out.resumed_from_block}")
        v = meter.verify()
        if v.get("version", image.manifest["version"]) != image.manifest["version"]:
            bad.append(f"verify: {v}")
        return bad

    def _check_copy(self, flash: Path, bootloader: dict) -> list[str]:
        """The running bootloader copy is whole: the factory copy as provisioning wrote it, or the
        new bootloader's files as its image has them."""
        copy = bootloader["copy"]
        got = _read_tree(flash, self.board, f"/bl/{copy}")
        if bootloader["version"] == NEW_BOOTLOADER:
            want = {f"/{name}": data for name, data in self.bootloader_image.files.items()}
            want["/manifest.json"] = self.bootloader_image.manifest_bytes
        else:
            want = self.factory_copy
        if got != want:
            differ = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
            return [f"bootloader copy {copy} ({bootloader['version']}) is not whole: {differ[:5]}"]
        return []

    def _check(self, meter: Meter, st: dict | None, records_before: list[dict], phase: str) -> list[str]:
        if st is None:
            return ["meter did not settle: no answer or a trial left hanging"]
        bad = []
        if phase == "recovery-upload":
            if st.get("mode") != "recovery":
                bad.append(f"not back in the recovery console: {st.get('mode')} {st.get('active_version')}")
            if st["slots"].get("b") != {"version": "1.1.0"}:
                bad.append(f"slot b: {st['slots'].get('b')}")
            return bad
        if st.get("mode") == "recovery":
            bad.append(f"recovery console: {st.get('recovery_reason')}")
            return bad
        if not st["confirmed"] or st["trial"]:
            bad.append("boot control not settled: confirmed=%s trial=%s" % (st["confirmed"], st["trial"]))
        if st["rejected"]:
            bad.append(f"a good image was rejected: {st['rejected']}")
        bl = st.get("bootloader") or {}
        if bl.get("trial") or bl.get("version") not in ("0.1.0", NEW_BOOTLOADER):
            bad.append(f"bootloader not settled: {bl}")
        if phase.startswith("bootloader-"):
            if phase == "bootloader-download" and bl.get("version") != "0.1.0":
                bad.append(f"a download changed the bootloader: {bl}")
            if st["slots"] != {"a": {"version": "1.0.0"}, "b": {"version": None}}:
                bad.append(f"slots changed: {st['slots']}")
        elif st["slots"] != {"a": {"version": "1.0.0"}, "b": {"version": "1.1.0"}}:
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


@contextmanager
def _fs(flash: Path, board: str):
    """The meter's filesystem in a (switched off) board's flash image, which on a Pico follows
    the firmware at the board's flash offset."""
    geo = flash_geometry(board)
    off = geo.get("offset", 0)
    raw = bytearray(flash.read_bytes())
    size = geo["block_size"] * geo["block_count"]
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], mount=False, **LFS_CONFIG)
    fs.context.buffer = bytearray(raw[off:off + size])
    fs.mount()
    yield fs
    fs.unmount()
    raw[off:off + size] = fs.context.buffer
    flash.write_bytes(bytes(raw))


def _read_slot(flash: Path, board: str, path: str) -> bytes:
    with _fs(flash, board) as fs:
        try:
            with fs.open(path, "rb") as f:
                return f.read()
        except Exception:  # noqa: BLE001 - littlefs-python's error for a missing file varies
            return b""


def _read_tree(flash: Path, board: str, top: str) -> dict[str, bytes]:
    """Every file below `top`, by its path below it ("/bootloader/boot.mpy")."""
    out = {}
    with _fs(flash, board) as fs:
        for root, _dirs, names in fs.walk(top):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                with fs.open(path, "rb") as f:
                    out[path[len(top):]] = f.read()
    return out


def _write_slot(flash: Path, board: str, path: str, data: bytes) -> None:
    with _fs(flash, board) as fs, fs.open(path, "wb") as f:
        f.write(data)


def _tail(path: Path, lines: int = 15, since: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise MeterfwError(f"timed out waiting for {what}")


def points(n_ops: int, sample: int | None) -> list[tuple[int, bool]]:
    """Every operation, clean and torn; or `sample` of them spread evenly over the phase, clean
    and torn in turn."""
    if sample is None or sample >= 2 * n_ops:
        return [(i, torn) for i in range(1, n_ops + 1) for torn in (False, True)]
    return [(1 + k * n_ops // sample, k % 2 == 1) for k in range(sample)]


def _print(o: Outcome) -> None:
    mark = "ok" if not o.violations else "VIOLATION: " + "; ".join(o.violations)
    print(f"  {o.phase:15} cut at op {o.cut_at:3} {'torn ' if o.torn else 'clean'}  -> {o.version}  {mark}",
          flush=True)
    if o.console:
        print("    console: " + o.console.replace("\n", "\n    console: "), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="powercut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, help="cut points per phase (default: every one)")
    ap.add_argument("--phase", choices=PHASES, action="append", help="only this phase (may be repeated)")
    ap.add_argument("--from-op", type=int, default=1, help="only cut points at this operation or later")
    ap.add_argument("--json", help="also write the outcomes to this file")
    ap.add_argument("--jobs", type=int, help=f"boards cut in parallel (default {_SIM_JOBS} sims, two a core, or 1 "
                                              "emulated Pico, which keeps a core busy)")
    ap.add_argument("--board", choices=BOARDS, default="sim",
                    help="sim (the simulated meter, default) or pico (the stock MicroPython firmware on an "
                         "emulated RP2040)")
    ap.add_argument("--firmware", help="pico: the MicroPython RPI_PICO UF2 (default $PICO_FIRMWARE, or the rig's)")
    args = ap.parse_args(argv)
    if args.firmware and args.board != "pico":
        ap.error("--firmware is for --board pico")
    started = time.monotonic()
    rows, outcomes = [], []
    with tempfile.TemporaryDirectory(prefix="meterfw-powercut-") as tmp:
        try:
            sweep = Sweep(Path(tmp), board=args.board, firmware=args.firmware, jobs=args.jobs)
        except SimError as e:  # no firmware or boot ROM
            print(f"powercut: {e}", file=sys.stderr)
            return e.code
        try:
            sweep.prepare()
            print(f"templates ready in {time.monotonic() - started:.0f} s", flush=True)
            for phase in args.phase or PHASES:
                t0 = time.monotonic()
                n = sweep.count(phase)
                todo = [pt for pt in points(n, args.sample) if pt[0] >= args.from_op]
                results = []
                with ThreadPoolExecutor(sweep.jobs) as pool:
                    for o in pool.map(lambda pt: sweep.run_point(phase, *pt), todo):
                        results.append(o)
                        _print(o)
                outcomes += results
                rows.append((phase, n, len(results), sum(not o.violations for o in results),
                             sum(bool(o.violations) for o in results), time.monotonic() - t0))
        except SimError as e:  # the emulator not installed, or a template that did not come out
            print(f"powercut: {e}", file=sys.stderr)
            return e.code
        finally:
            sweep.close()
    print(f"\n{'phase':17}{'flash ops':>10}{'cut points':>12}{'recovered':>11}{'violations':>12}{'wall time':>11}")
    for phase, n, pts, ok, bad, wall in rows:
        print(f"{phase:17}{n:>10}{pts:>12}{ok:>11}{bad:>12}{_mmss(wall):>11}")
    total = time.monotonic() - started
    print(f"{'total':17}{sum(r[1] for r in rows):>10}{sum(r[2] for r in rows):>12}{sum(r[3] for r in rows):>11}"
          f"{sum(r[4] for r in rows):>12}{_mmss(total):>11}")
    print(f"\n{args.board}, {sweep.jobs} boards: {total:.0f} s wall time (templates included)")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.violations for o in outcomes) else 0


def _mmss(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
