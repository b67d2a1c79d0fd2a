"""pytest fixtures for the simulated board. Loaded from tests/conftest.py with
`pytest_plugins = ["hil.pytest_plugin"]`; everything it registers lives in this module.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hil.sim import SimBoard, pid_alive

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


@pytest.fixture(scope="session")
def images(tmp_path_factory, keys_dir) -> dict:
    """Signed images built once per run from firmware/: v1 and v2 for sim, and a pico image."""
    from meterfw.image import build_image
    from meterfw.keys import load_keys
    from meterfw.paths import FIRMWARE

    keys = load_keys(keys_dir)
    out = tmp_path_factory.mktemp("images")
    made = {}
    for name, board, version in (("v1", "sim", "1.0.0"), ("v2", "sim", "1.1.0"), ("pico", "pico", "1.1.0")):
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(build_image(FIRMWARE, board, version, keys))
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
}


@pytest.fixture(scope="session")
def variant_images(tmp_path_factory, keys_dir) -> dict:
    """name -> image file of version 1.1.0 with one injected fault (see _VARIANTS)."""
    import shutil

    from meterfw.image import build_image
    from meterfw.keys import load_keys
    from meterfw.paths import FIRMWARE

    keys = load_keys(keys_dir)
    out = tmp_path_factory.mktemp("variants")
    made = {}
    for name, (module, text, where) in _VARIANTS.items():
        src = out / name
        shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
        path = src / module
        path.write_text(text + path.read_text() if where == "prepend" else path.read_text() + text)
        made[name] = out / f"{name}.mfw"
        made[name].write_bytes(build_image(src, "sim", "1.1.0", keys, build_time=1))
    return made


class MeterBoard:
    """A SimBoard running our firmware, with what tests need to check its data."""

    def __init__(self, sim, seed: int, interval_s: int, keys_dir: Path):
        self.sim = sim
        self.keys_dir = keys_dir
        self.port = sim.port
        self.seed = seed
        self.interval_s = interval_s

    def meter(self):
        from meterfw.session import Meter
        from meterfw.transport import Link

        from meterfw.keys import load_keys

        return Meter(Link(self.port), utility_secret=load_keys(self.keys_dir, private=False).utility_secret)

    def wait_intervals(self, n: int) -> list[dict]:
        """Block until the meter has closed at least n intervals; returns them."""
        meter = self.meter()
        try:
            deadline = time.monotonic() + (n + 2) * self.interval_s + 20
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


@pytest.fixture
def board(sim_factory, images, keys_dir) -> MeterBoard:
    """A factory-fresh simulated meter running image v1, metering short intervals."""
    sim = sim_factory(image=images["v1"], keys=keys_dir, interval_s=INTERVAL_S, seed=SEED)
    return MeterBoard(sim, SEED, INTERVAL_S, keys_dir)


@pytest.fixture
def make_board(sim_factory, images, keys_dir):
    """make_board(image=..., **sim_json_overrides) for boards that need other settings
    (a short watchdog, one trial attempt, ...). Overrides go to sim.json before start."""

    def make(image=None, **overrides) -> MeterBoard:
        import json as _json

        d = sim_factory.new_dir()
        if overrides:
            (d / "sim.json").write_text(_json.dumps(overrides))
        sim = sim_factory(dir=d, image=image or images["v1"], keys=keys_dir, interval_s=INTERVAL_S, seed=SEED)
        return MeterBoard(sim, SEED, INTERVAL_S, keys_dir)

    return make


@pytest.fixture
def link(board):
    from meterfw.transport import Link

    with Link(board.port) as lk:
        yield lk


@pytest.fixture
def meter(link, keys_dir):
    from meterfw.keys import load_keys
    from meterfw.session import Meter

    return Meter(link, utility_secret=load_keys(keys_dir, private=False).utility_secret)
