"""The micropython-lib packages (package.json for mip, manifest.py for freezing) list exactly
what provisioning lays out on a device, and what an image carries.

bootloader/package.json: /main.py (the first stage) and the factory bootloader copy /bl/a/bootloader/;
boards/<board>/package.json: /board/ with board.json. Provisioning compiles the modules to .mpy;
mip installs the sources, which MicroPython imports the same way. boards/pico/manifest.py (and
pico2's, which includes it) freezes the first stage and the factory bootloader. A bootloader/manifest.py or a firmware/package.json would itself ship to every meter
(provisioning compiles every bootloader/*.py, an image packs every file under firmware/): the
tests below would then fail.
"""
import json
import re
import sys
from pathlib import Path

import pytest

from meterfw.image import build_image, parse_image
from meterfw.keys import load_keys
from meterfw.paths import BOARD_NAMES, BOOTLOADER, FIRMWARE, REPO, board_dir
from meterfw.provision import HAL_SOURCES, device_files

URL_PREFIX = "github:meterfw/meterfw/"
PACKAGES = {"bootloader": BOOTLOADER, **{f"boards/{b}": board_dir(b) for b in BOARD_NAMES}}
MANIFESTS = [board_dir("pico") / "manifest.py", board_dir("pico2") / "manifest.py"]


def _project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(text)["project"]["version"]
    return re.search(r'(?ms)^\[project\].*?^version = "([^"]+)"', text).group(1)


def _package(folder: Path) -> dict:
    return json.loads((folder / "package.json").read_text())


def _device_path(target: str) -> str:
    """Where provisioning puts what mip installs at `target` (relative to --target /)."""
    if target == "main.py" or not target.endswith(".py"):
        return "/" + target  # /main.py stays source, board.json is data
    return "/" + target[:-3] + ".mpy"


def _laid_out(files: dict, prefixes: tuple) -> set:
    return {p for p in files if p.startswith(prefixes)}


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, keys_dir) -> dict:
    """board -> device_files() of a fresh device. The files outside /slots/ do not depend on the
    image, so a one-module image per board will do."""
    keys = load_keys(keys_dir)
    src = tmp_path_factory.mktemp("src")
    (src / "app.py").write_text("def main(platform):\n    pass\n")
    out = {}
    for board in BOARD_NAMES:
        image = build_image(src, board, "1.0.0", keys, build_time=1)
        out[board] = device_files(image, keys_dir, board, "MF0000000001")
    return out


# --- package.json -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PACKAGES)
def test_package_json_is_mip_shaped_and_points_at_repo_files(name):
    pkg = _package(PACKAGES[name])
    assert set(pkg) == {"urls", "deps", "version"}
    assert pkg["version"] == _project_version()
    assert pkg["deps"] == []
    targets = [t for t, _ in pkg["urls"]]
    assert len(targets) == len(set(targets)), "a target path twice"
    for target, url in pkg["urls"]:
        assert not target.startswith("/") and ".." not in target.split("/"), target
        assert url.startswith(URL_PREFIX), url
        assert (REPO / url[len(URL_PREFIX):]).is_file(), f"{url} is not a file in the repository"
        assert Path(url).name == Path(target).name, (target, url)


def test_bootloader_package_installs_what_provisioning_lays_out(provisioned):
    installed = {_device_path(t) for t, _ in _package(BOOTLOADER)["urls"]}
    for board, files in provisioned.items():
        assert installed == _laid_out(files, ("/main.py", "/bl/a/bootloader/")), board


@pytest.mark.parametrize("board", BOARD_NAMES)
def test_board_package_installs_what_provisioning_lays_out(provisioned, board):
    pkg = _package(board_dir(board))
    assert {_device_path(t) for t, _ in pkg["urls"]} == _laid_out(provisioned[board], ("/board/",))
    # The same sources, too: pico2's rp2hal is boards/pico/rp2hal.py.
    sources = {REPO / url[len(URL_PREFIX):] for _, url in pkg["urls"]}
    assert sources == set(HAL_SOURCES[board]) | {board_dir(board) / "board.json"}


def test_firmware_images_hold_its_modules_and_nothing_else(images):
    """The application's files are an image's file table: firmware/*.py compiled, nothing else.
    That is also why firmware/ has no package.json: it would be packed into every image."""
    files = parse_image(images["pico"].read_bytes()).files
    sources = [p for p in FIRMWARE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert set(files) == {p.relative_to(FIRMWARE).with_suffix(".mpy").as_posix() for p in sources}
    assert all(p.suffix == ".py" for p in sources)


# --- manifest.py (freezing) -----------------------------------------------------------------------

class _Manifest:
    """The manifest functions of MicroPython's tools/manifestfile.py, collecting what a manifest
    names: (target path as frozen, source file). A relative include() is followed, with paths
    relative to the included file, as manifestfile does; a $(VAR) one is only recorded."""

    def __init__(self):
        self.frozen, self.external, self.calls = [], [], []

    def run(self, path: Path, monkeypatch):
        monkeypatch.chdir(path.parent)
        g = {"include": lambda p, **kw: self.include(path.parent, p, monkeypatch),
             "module": self.module, "package": self.package, "require": self.require,
             "metadata": lambda **kw: self.calls.append(("metadata", kw))}
        exec(compile(path.read_text(), str(path), "exec"), g)

    def include(self, here: Path, p: str, monkeypatch):
        self.calls.append(("include", p))
        if p.startswith("$("):
            self.external.append(p)
            return
        target = (here / p).resolve()
        self.run(target / "manifest.py" if target.is_dir() else target, monkeypatch)
        monkeypatch.chdir(here)

    def module(self, module_path, base_path=".", opt=None):
        self.calls.append(("module", module_path, opt))
        self.frozen.append((module_path, (Path(base_path) / module_path).resolve()))

    def package(self, package_path, files=None, base_path=".", opt=None):
        self.calls.append(("package", package_path, opt))
        assert files is not None, "a package() without files= freezes every .py below it"
        for f in files:
            target = f"{package_path}/{f}"
            self.frozen.append((target, (Path(base_path) / target).resolve()))

    def require(self, name, **kw):
        self.calls.append(("require", name))
        self.external.append(name)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_freezes_the_bootloader_provisioning_lays_out(path, provisioned, monkeypatch):
    m = _Manifest()
    m.run(path, monkeypatch)
    targets = [t for t, _ in m.frozen]
    assert len(targets) == len(set(targets))
    frozen = {_device_path(t).replace("/bootloader/", "/bl/a/bootloader/") for t in targets}
    assert frozen == _laid_out(provisioned["pico"], ("/main.py", "/bl/a/bootloader/"))
    assert all(src == BOOTLOADER / Path(t).name for t, src in m.frozen)
    assert all(c[2] == 3 for c in m.calls if c[0] in ("module", "package")), "-O3, as provisioning"
    # The port's own frozen modules stay (asyncio among them): FROZEN_MANIFEST replaces them.
    assert m.external == ["$(PORT_DIR)/boards/manifest.py"]

