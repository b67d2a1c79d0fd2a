"""pytest fixtures for the device under test. Loaded from tests/conftest.py with
`pytest_plugins = ["hil.pytest_plugin"]`; everything it registers lives in this module.

The device under test (DUT) is chosen on the command line:
  --board sim                      the simulated board (default): the unix port, every fault
  --board pico [--firmware UF2]    the stock MicroPython firmware on an emulated RP2040
  --board pico --port DEVICE       a real Pico whose meter link is DEVICE, provisioned before
      [--repl-port DEVICE]         each test through its USB REPL (default: DEVICE), with
      [--power-cmd CMD]            optional commands that cut and restore power (CMD off|on,
      [--reset-cmd CMD]            e.g. a USB relay) and press reset
A test names what it needs of the DUT (`board.needs("power", "cut")`); one the DUT cannot give
is skipped with that reason.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hil.sim import SimBoard, pid_alive
from hil.supervisor import NO_FIRMWARE, default_firmware

# What each kind of DUT can be asked to do. A real board has power and reset only through the
# commands given for them.
CAPABILITIES = {
    "sim": {"power", "reset", "cut", "flash_ops", "console", "watchdog", "files", "uart_loss_model",
            "metrology_truth", "tcp"},
    "pico": {"power", "reset", "cut", "flash_ops", "console", "watchdog", "metrology_truth", "usb_repl", "tcp"},
    "port": set(),
}


def pytest_addoption(parser):
    g = parser.getgroup("meterfw", "meterfw device under test")
    g.addoption("--board", default="sim", choices=("sim", "pico"), help="the board the tests run on")
    g.addoption("--firmware", default=None, help="pico: the MicroPython RPI_PICO UF2 (default $PICO_FIRMWARE)")
    g.addoption("--port", default=None, help="a real board's meter link (a device path or pyserial URL)")
    g.addoption("--repl-port", default=None, help="a real board's USB REPL for provisioning (default: --port)")
    g.addoption("--power-cmd", default=None, help="a real board: CMD off / CMD on cut and restore its power")
    g.addoption("--reset-cmd", default=None, help="a real board: CMD presses its reset")


class Dut:
    """What the command line chose: the board, and how to reach it."""

    def __init__(self, config):
        opt = config.getoption
        self.board = opt("--board")
        self.port = opt("--port")
        self.repl_port = opt("--repl-port") or self.port
        self.power_cmd = opt("--power-cmd")
        self.reset_cmd = opt("--reset-cmd")
        self.kind = "port" if self.port else self.board
        fw = opt("--firmware")
        self.firmware = Path(fw).expanduser().resolve() if fw else default_firmware()
        self.capabilities = set(CAPABILITIES[self.kind])
        if self.kind == "port":
            self.capabilities |= {"power"} if self.power_cmd else set()
            self.capabilities |= {"reset"} if self.reset_cmd else set()

    def needs_firmware(self) -> None:
        if self.firmware is None or not self.firmware.is_file():
            why = NO_FIRMWARE if self.firmware is None else f"Pico firmware {self.firmware} not found"
            if os.environ.get("METERFW_REQUIRE_PICO"):  # CI: the Pico tier must run, not skip
                pytest.fail(why)
            pytest.skip(why)


@pytest.fixture(scope="session")
def dut(request) -> Dut:
    return Dut(request.config)


# The emulator computes 4-7x slower than a Pico, more on a loaded machine: a compute-bound reply
# (two Ed25519 checks take ~1.5 s of Pico time) takes that much longer in the host's time.
PICO_TIMEOUT_S = 30


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A SIGTERM (a CI limit, a harness ending the run) unwinds like Ctrl-C, so every fixture's
    # teardown still stops the boards, emulators and servers it started.
    signal.signal(signal.SIGTERM, _interrupted)
    # The CLI the tests run waits that long on the emulated Pico (its --timeout default).
    if config.getoption("--board") == "pico" and not config.getoption("--port"):
        os.environ.setdefault("METERFW_TIMEOUT", str(PICO_TIMEOUT_S))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs pytest-xdist with `--dist loadfile`: a file's tests stay together on one
    worker, in order (they share module fixtures, and some take one meter through steps). Here
    the emulated Pico's files also count as one unit, run one after another on one worker: each
    emulator keeps a core busy. (xdist's own loadgroup cannot group on pytest 9: it renames node
    ids through an attribute pytest no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndOnePico(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/pico/" if path.startswith("tests/pico/") else path

    return FilesAndOnePico(config, log)


_GONE_TIMEOUT_S = 5.0


class SimFactory:
    """`start(**opts)` starts a SimBoard in a fresh directory (or `dir=` one of `new_dir()`)."""

    def __init__(self, base: Path):
        self._base = base
        self._n = 0
        self.boards: list[SimBoard] = []

    def new_dir(self) -> Path:
        """A fresh, empty directory for the next board, to prepare files in before start."""
        self._n += 1
        d = self._base / f"sim{self._n}"
        d.mkdir(parents=True)
        return d

    def __call__(self, dir: Path | None = None, **opts) -> SimBoard:
        board = SimBoard.start(dir if dir is not None else self.new_dir(), **opts)
        self.boards.append(board)
        return board

    start = __call__

    def close(self) -> list[str]:
        """Stop every board; returns a description of each process that survived."""
        leftovers = []
        for board in self.boards:
            pids = {"supervisor": board.pid, "device": board.state().get("device_pid")}
            board.stop()
            deadline = time.monotonic() + _GONE_TIMEOUT_S
            for role, pid in pids.items():
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if pid_alive(pid):
                    leftovers.append(f"{role} pid {pid} of {board.dir}")
        return leftovers


@pytest.fixture
def sim_factory(tmp_path):
    factory = SimFactory(tmp_path)
    yield factory
    leftovers = factory.close()
    assert not leftovers, f"processes left running: {leftovers}"


# --- a simulated meter running our firmware -------------------------------------------------

SEED = 11
INTERVAL_S = 3


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory) -> Path:
    from meterfw.keys import init_keys

    d = tmp_path_factory.mktemp("keys") / "keys"
    init_keys(d)
    return d


def _build(src: Path, board: str, version: str, keys_dir: Path, **kw) -> bytes:
    from meterfw.image import build_image
    from meterfw.keys import load_keys

    return build_image(src, board, version, load_keys(keys_dir), **kw)


@pytest.fixture(scope="session")
def images(tmp_path_factory, keys_dir, dut) -> dict:
    """Signed images built once per run from firmware/: v1 and v2 for the DUT's board, a pico
    image, and `other` for a board other than the DUT's."""
    from meterfw.paths import FIRMWARE

    out = tmp_path_factory.mktemp("images")
    made = {}
    other = "sim" if dut.board == "pico" else "pico"
    for name, board, version in (("v1", dut.board, "1.0.0"), ("v2", dut.board, "1.1.0"), ("pico", "pico", "1.1.0"),
                                 ("other", other, "1.1.0")):
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(_build(FIRMWARE, board, version, keys_dir))
    return made


# Firmware variants that fail in one way each, made from firmware/ by a small patch, so the
# production code carries no fault hooks.
_VARIANTS = {
    "crash_at_import": ("app.py", 'raise RuntimeError("crash at import (test image)")\n', "prepend"),
    "hang": ("app.py", "\n\ndef main(platform):\n    import time\n    while True:\n        time.sleep(1)\n",
             "append"),
    "critical_health": ("health.py", "\n\nasync def _injected(board, metering):\n    return 'injected failure'\n\n"
                        "CHECKS = CHECKS + (('injected', CRITICAL, _injected),)\n", "append"),
    "important_health": ("health.py", "\n\nasync def _injected(board, metering):\n    return 'injected failure'\n\n"
                         "CHECKS = CHECKS + (('injected', IMPORTANT, _injected),)\n", "append"),
    # A health check that takes 20 s: the image stays on trial that long, answering meanwhile.
    "slow_health": ("health.py", "\n\nasync def _injected(board, metering):\n    import asyncio\n"
                    "    await asyncio.sleep(20)\n\nCHECKS = CHECKS + (('injected', IMPORTANT, _injected),)\n",
                    "append"),
}


def build_variants(out: Path, board: str, keys_dir: Path, names=None, version: str = "1.1.0") -> dict:
    """name -> image file of `version` for `board` with one injected fault (see _VARIANTS)."""
    import shutil

    from meterfw.paths import FIRMWARE

    made = {}
    for name in names or _VARIANTS:
        module, text, where = _VARIANTS[name]
        src = out / name
        shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
        path = src / module
        path.write_text(text + path.read_text() if where == "prepend" else path.read_text() + text)
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(_build(src, board, version, keys_dir, build_time=1))
    return made


def build_changed(out: Path, board: str, keys_dir: Path, version: str, count: int | None = 1) -> Path:
    """An image of firmware/ at `version` with `count` of its modules changed (None: all of them),
    spread over the image, as a fix or a new version changes them: each gets a function of its
    own, so its code and names differ and the rest of the image does not. For deltas (tests,
    bench, the power-cut sweep)."""
    import shutil

    from meterfw.paths import FIRMWARE

    name = f"changed-{version}-{count or 'all'}"
    src = out / name
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    modules = sorted(src.glob("*.py"))
    count = min(count or len(modules), len(modules))
    for i, path in enumerate(modules[::len(modules) // count][:count]):
        path.write_text(path.read_text() + f"\n\ndef _changed_{i}(x):\n    return x * {i + 2} + {len(path.name)}\n")
    image = out / f"{name}.mfw"
    image.write_bytes(_build(src, board, version, keys_dir, build_time=1))
    return image


@pytest.fixture(scope="session")
def variant_images(tmp_path_factory, keys_dir, dut) -> dict:
    return build_variants(tmp_path_factory.mktemp("variants"), dut.board, keys_dir)


class MeterBoard:
    """The device under test running our firmware, with what tests need to check its data: a
    SimBoard (the sim or the emulated Pico) or a RealBoard."""

    def __init__(self, sim, seed: int, interval_s: int, keys_dir: Path, kind: str = "sim", load: str | None = None):
        self.sim = sim
        self.keys_dir = keys_dir
        self.port = sim.port
        self.seed = seed
        self.load = load or "mixed"  # the premises' load profile (hil.metrology)
        self.interval_s = interval_s
        self.kind = kind
        self.timeout_s = PICO_TIMEOUT_S if kind == "pico" else 3.0

    def needs(self, *capabilities: str) -> None:
        """Skip the test unless the DUT can do all of these (see CAPABILITIES)."""
        lacking = [c for c in capabilities if c not in CAPABILITIES.get(self.kind, ())
                   and c not in getattr(self.sim, "capabilities", ())]
        if lacking:
            pytest.skip(f"the device under test ({self.kind}) cannot give: {', '.join(lacking)}")

    def true_energies(self, start_s: int, end_s: int) -> tuple[int, int]:
        """(delivered_mwh, received_mwh) that truly flowed in [start_s, end_s): the host's twin
        of this meter's front-end, with its seed and load profile."""
        from hil.metrology import true_energies

        return true_energies(self.seed, start_s, end_s, self.load)

    def link(self):
        from meterfw.transport import Link

        return Link(self.port, timeout_s=self.timeout_s)

    def meter(self):
        from meterfw.keys import load_keys
        from meterfw.session import Meter

        return Meter(self.link(), utility_secret=load_keys(self.keys_dir, private=False).utility_secret)

    def wait_intervals(self, n: int) -> list[dict]:
        """Block until the meter has closed at least n intervals; returns them."""
        meter = self.meter()
        try:
            deadline = time.monotonic() + (n + 2) * self.interval_s + 20 + 3 * self.timeout_s
            while time.monotonic() < deadline:
                recs = meter.read_intervals()
                if len(recs) >= n:
                    return recs
                time.sleep(self.interval_s / 3)
        finally:
            meter.link.close()
        raise AssertionError(f"meter closed fewer than {n} intervals in time")

    def __getattr__(self, name):
        return getattr(self.sim, name)


class RealBoard:
    """A real board on --port: provisioned through its REPL, powered and reset by the given
    commands. It has no flash-operation counter, console or metrology truth."""

    def __init__(self, dut: Dut):
        self.dut = dut
        self.port = dut.port
        self.capabilities = set(dut.capabilities)
        self.dir = None

    def provision(self, image: Path, keys_dir: Path, **_ignored) -> None:
        from meterfw.provision import provision_repl

        provision_repl(self.dut.repl_port, Path(image).read_bytes(), keys_dir, self.dut.board, wipe=True)

    def _run(self, cmd: str, *args: str) -> None:
        subprocess.run(shlex.split(cmd) + list(args), check=True, timeout=60)

    def power_cycle(self, off_s: float = 0.0) -> dict:
        self._run(self.dut.power_cmd, "off")
        time.sleep(max(off_s, 0.5))
        self._run(self.dut.power_cmd, "on")
        return {}

    def reset(self) -> dict:
        self._run(self.dut.reset_cmd)
        return {}

    def state(self) -> dict:
        return {}

    def console(self) -> str:
        return ""

    def stop(self) -> bool:
        return False


def start_dut(sim_factory, dut: Dut, image, keys_dir, interval_s, seed, overrides=None, load=None):
    """Start (or, for a real board, provision) the DUT with `image`; `overrides` are board
    defaults for this test (sim.json on the sim, /board/board.json on a Pico); `load` is the
    premises' load profile (a real board's is whatever its premises draw)."""
    if dut.kind == "port":
        board = RealBoard(dut)
        board.provision(image, keys_dir)
        return board
    d = sim_factory.new_dir()
    if dut.kind == "pico":
        dut.needs_firmware()
        defaults = dict(overrides or {})
        han = defaults.pop("han", None)  # the rig fits a HAN co-processor: wiring, not a default
        return sim_factory(dir=d, image=image, keys=keys_dir, interval_s=interval_s, seed=seed,
                           board="pico", firmware=dut.firmware, defaults=defaults, load=load, han=han)
    if overrides:
        import json as _json

        (d / "sim.json").write_text(_json.dumps(overrides))
    return sim_factory(dir=d, image=image, keys=keys_dir, interval_s=interval_s, seed=seed, load=load)


# The emulated Pico boots in seconds of host time; its intervals are longer so that a boot
# falls within one.
PICO_INTERVAL_S = 5


def _interval_s(dut: Dut) -> int:
    return INTERVAL_S if dut.kind == "sim" else PICO_INTERVAL_S


@pytest.fixture
def board(sim_factory, images, keys_dir, dut) -> MeterBoard:
    """A factory-fresh meter running image v1, metering short intervals."""
    iv = _interval_s(dut)
    return MeterBoard(start_dut(sim_factory, dut, images["v1"], keys_dir, iv, SEED), SEED, iv, keys_dir, dut.kind)


@pytest.fixture
def make_board(sim_factory, images, keys_dir, dut):
    """make_board(image=..., load=..., **overrides) for boards that need other settings (a short
    watchdog, one trial attempt, a premises' load profile, ...)."""

    def make(image=None, load=None, **overrides) -> MeterBoard:
        iv = _interval_s(dut)
        sim = start_dut(sim_factory, dut, image or images["v1"], keys_dir, iv, SEED, overrides, load)
        return MeterBoard(sim, SEED, iv, keys_dir, dut.kind, load)

    return make


@pytest.fixture
def link(board):
    with board.link() as lk:
        yield lk


@pytest.fixture
def meter(link, keys_dir):
    from meterfw.keys import load_keys
    from meterfw.session import Meter

    return Meter(link, utility_secret=load_keys(keys_dir, private=False).utility_secret)


# --- the emulated Pico, whatever --board says: the core scenarios in `make test` -------------

@pytest.fixture(scope="session")
def pico_dut(request) -> Dut:
    """The emulated Pico with the firmware from --firmware or $PICO_FIRMWARE; skips, saying how
    to get a firmware, when there is none."""
    d = Dut(request.config)
    d.board, d.kind, d.port = "pico", "pico", None
    d.capabilities = set(CAPABILITIES["pico"])
    d.needs_firmware()
    return d


@pytest.fixture(scope="session")
def pico_images(tmp_path_factory, keys_dir, pico_dut) -> dict:
    """v1, v2 and the failing variants for the pico board."""
    from meterfw.paths import FIRMWARE

    import random
    import shutil

    out = tmp_path_factory.mktemp("pico-images")
    made = build_variants(out, "pico", keys_dir, ("crash_at_import", "hang"))
    for name, version in (("v1", "1.0.0"), ("v2", "1.1.0")):
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(_build(FIRMWARE, "pico", version, keys_dir))
    # v2 with 60 KB of random padding: past the meter's first 64 KiB commit of the slot file.
    src = out / "big"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "blob.bin").write_bytes(random.Random(7).randbytes(60_000))
    made["big"] = out / "big.mfw"
    made["big"].write_bytes(_build(src, "pico", "1.1.0", keys_dir))
    return made


@pytest.fixture
def make_pico(sim_factory, pico_images, keys_dir, pico_dut):
    """make_pico(image=..., load=..., **board_defaults): an emulated Pico meter."""

    def make(image=None, load=None, **overrides) -> MeterBoard:
        sim = start_dut(sim_factory, pico_dut, image or pico_images["v1"], keys_dir, PICO_INTERVAL_S, SEED,
                        overrides, load)
        return MeterBoard(sim, SEED, PICO_INTERVAL_S, keys_dir, "pico", load)

    return make
