"""Lay out a factory-fresh device filesystem, as flashing a board does: bootloader, board
files, public keys, the meter's identity and one image as the confirmed slot.

The result is a littlefs image with the Pico's geometry; the simulated board boots it as it
is, and the same bytes go into a UF2 for a real Pico.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from littlefs import LittleFS

from .auth import meter_key
from .errors import CommandError, TransportError
from .image import Image, ImageError, as_image, compile_module
from .keys import load_keys
from .paths import BOOTLOADER, board_dir

# VfsLfs2's defaults on MicroPython: images made here must mount there unchanged.
LFS_CONFIG = dict(read_size=32, prog_size=32, lookahead_size=32)


# The board's HAL modules that go to /board/ (pico2 shares the rp2 code of pico).
HAL_SOURCES = {
    "sim": [board_dir("sim") / "hal.py"],
    "pico": [board_dir("pico") / "hal.py", board_dir("pico") / "rp2hal.py"],
    "pico2": [board_dir("pico2") / "hal.py", board_dir("pico") / "rp2hal.py"],
}


# The bootloader copy a fresh device runs: the first stage (/main.py) runs copy a while its record
# (/boot/blr0, /boot/blr1) says nothing else; a bootloader update installs into the other.
FACTORY_COPY = "/bl/a"


def flash_geometry(board: str) -> dict:
    return json.loads((board_dir(board) / "board.json").read_text())["flash"]


def provision_image(image: Image | bytes) -> Image:
    """The Image to provision: a caller's parsed Image as it is, or one parsed from bytes here.
    Where it is parsed, a malformed image is refused in provisioning's words."""
    try:
        return as_image(image)
    except ImageError as e:
        raise CommandError(f"cannot provision: {e}") from None


def check_image(img: Image, board: str) -> None:
    """Refuse an image for another board."""
    if img.manifest["board"] != board:
        raise CommandError(f"cannot provision: image is for board {img.manifest['board']}, not {board}")


def device_files(image: Image | bytes, keys_dir: Path, board: str, serial: str) -> dict[str, bytes]:
    """Every file of a fresh device, by absolute device path."""
    img = provision_image(image)
    check_image(img, board)
    keys = load_keys(keys_dir, private=False)
    files = {"/main.py": (BOOTLOADER / "main.py").read_bytes()}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(BOOTLOADER.glob("*.py")):
            if src.name != "main.py":
                files[f"{FACTORY_COPY}/bootloader/{src.stem}.mpy"] = compile_module(src, f"bootloader/{src.stem}.mpy", Path(tmp))
        for src in HAL_SOURCES[board]:
            files[f"/board/{src.stem}.mpy"] = compile_module(src, f"board/{src.stem}.mpy", Path(tmp))
    files["/board/board.json"] = (board_dir(board) / "board.json").read_bytes()
    files["/keys/vendor.pub"] = keys.vendor_public_raw
    if keys.utility_public_raw:
        files["/keys/utility.pub"] = keys.utility_public_raw
    if keys.utility_secret is None:
        raise CommandError(f"cannot provision: {keys_dir} has no utility.secret to derive the meter key from")
    files["/keys/meter.key"] = meter_key(keys.utility_secret, serial)
    files["/identity.json"] = json.dumps({"serial": serial, "board": board}).encode()
    files["/slots/a.mfw"] = img.data
    return files


def default_serial(image: Image | bytes, seed: str) -> str:
    return "MF" + hashlib.sha256(seed.encode()).hexdigest()[:10].upper()


def device_dirs(files: dict[str, bytes]) -> list[str]:
    """The directories a fresh device has, parents first: those of its files, and the empty
    /data and /boot the meter fills."""
    dirs = {"/data", "/boot"}
    for path in files:
        parts = path.split("/")[1:-1]
        dirs.update("/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return sorted(dirs)


def build_flash(files: dict[str, bytes], board: str) -> bytes:
    geo = flash_geometry(board)
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], **LFS_CONFIG)
    for d in device_dirs(files):
        fs.mkdir(d)
    for path, data in files.items():
        with fs.open(path, "wb") as f:
            f.write(data)
    return bytes(fs.context.buffer)


def read_fs(fs_bytes: bytes, board: str) -> tuple[dict[str, bytes], list[str]]:
    """Every file of a littlefs image with the board's geometry, and its directories."""
    geo = flash_geometry(board)
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], mount=False, **LFS_CONFIG)
    fs.context.buffer = bytearray(fs_bytes)
    fs.mount()
    files, dirs = {}, []
    for root, subdirs, names in fs.walk("/"):
        root = root.rstrip("/")
        dirs += [f"{root}/{d}" for d in subdirs]
        for name in names:
            with fs.open(f"{root}/{name}", "rb") as f:
                files[f"{root}/{name}"] = f.read()
    fs.unmount()
    return files, sorted(dirs)


def provision(flash_path: Path, image: Image | bytes, keys_dir: Path, board: str = "sim",
              serial: str | None = None) -> dict:
    img = provision_image(image)
    serial = serial or default_serial(img, str(flash_path.resolve()))
    flash = build_flash(device_files(img, keys_dir, board, serial), board)
    flash_path.write_bytes(flash)
    return {"serial": serial, "board": board, "flash_bytes": len(flash)}


# --- a Pico that already runs MicroPython: the same files, through its REPL (mpremote) ------------

# Generous: the emulated Pico computes ~5x slower than silicon, and a hash of a slot reads it all.
REPL_TIMEOUT_S = 60
_CHUNK = 2048  # bytes per raw-REPL write: the device compiles one `w(b'...')` per chunk

# Answers, in one round trip, what the board is and what it holds.
_PROBE = """import os,sys,machine
def _ls(p):
 try:
  return os.listdir(p)
 except OSError:
  return None
print(repr((sys.implementation._machine,machine.unique_id(),_ls('/'),_ls('/data'))))
"""

# Removes the meter's own entries (and nothing else) from the board's filesystem.
_WIPE = """import os
def _rm(p):
 if os.stat(p)[0]&0x4000:
  for n in os.listdir(p):
   _rm(p+'/'+n)
  os.rmdir(p)
 else:
  os.remove(p)
for p in {paths!r}:
 try:
  os.stat(p)
 except OSError:
  continue
 _rm(p)
"""


def board_chip(board: str) -> str:
    """The chip the board's MicroPython reports in sys.implementation._machine."""
    return json.loads((board_dir(board) / "board.json").read_text())["mcu"].split()[0]


def meter_paths(files: dict[str, bytes]) -> list[str]:
    """The top-level entries of the device filesystem that belong to the meter."""
    return sorted({"/" + path.split("/")[1] for path in files} | {"/data", "/boot"})


def provision_repl(port: str, image: Image | bytes, keys_dir: Path, board: str, serial: str | None = None,
                   wipe: bool = False, progress=None) -> dict:
    """Lay a fresh meter's files onto a board that runs stock MicroPython, through its REPL:
    directories, every file, each checked by a SHA-256 the board computes, then a reset so it boots
    as a meter. A board that holds meter data (/slots, or files in /data) is refused, untouched,
    unless `wipe`. The meter's own top-level entries are cleared before anything is written
    (without meter data, that is only code an unfinished run left); other files stay. The serial
    defaults to one derived from the chip's unique id."""
    img = provision_image(image)
    check_image(img, board)  # before the board is touched
    chip = board_chip(board)
    if not chip.startswith("RP"):
        raise CommandError(f"provisioning through the REPL is for a Pico; board {board} has no REPL to provision")
    started = time.monotonic()
    with _Repl(port) as repl:
        machine, uid, top, data = repl.query(_PROBE, lambda v: isinstance(v, tuple) and len(v) == 4 and
                                             isinstance(v[0], str) and isinstance(v[1], bytes) and
                                             all(x is None or isinstance(x, list) for x in v[2:]))
        if f"with {chip}" not in machine:
            raise CommandError(f"cannot provision: {port} is {machine!r}, not a {chip} ({board})")
        if top is None:
            raise CommandError(f"cannot provision: {port} has no filesystem at /")
        holds_meter = "slots" in top or bool(data)
        if holds_meter and not wipe:
            raise CommandError(f"{port} already holds meter data (/slots or /data); nothing changed; "
                               "give --wipe to remove the old meter first")
        serial = serial or default_serial(img, f"{chip}:{uid.hex()}")
        files = device_files(img, keys_dir, board, serial)
        repl.exec(_WIPE.format(paths=meter_paths(files)))
        for d in device_dirs(files):
            repl.exec(f"import os\nos.mkdir({d!r})")
        total = sum(len(b) for b in files.values())
        done = 0
        for path, content in files.items():
            repl.write_file(path, content, progress and (lambda n, _, base=done: progress(base + n, total)))
            done += len(content)
        for path, content in files.items():
            if repl.sha256(path) != hashlib.sha256(content).digest():
                raise CommandError(f"{path} on {port} does not match what was written; provision again with --wipe")
        repl.reset()
    return {"port": port, "board": board, "serial": serial, "files": len(files), "bytes": total,
            "seconds": round(time.monotonic() - started, 1), "verified": True}


class _Repl:
    """mpremote's serial transport in its raw REPL, its errors turned into one-line ours."""

    def __init__(self, port: str):
        self._port = port
        self._t: Any = None  # mpremote's transport, once open

    def __enter__(self):
        from mpremote.transport import TransportError as MpError
        from mpremote.transport_serial import SerialTransport

        class Transport(SerialTransport):
            def exec(self, command, data_consumer=None):  # mpremote's waits 10 s for output
                out, err = self.exec_raw(command, timeout=REPL_TIMEOUT_S, data_consumer=data_consumer)
                if err:
                    raise _DeviceError(err.decode(errors="replace"))
                return out

        try:
            # A read timeout, or mpremote's waits on a pty never end (it reads one byte blocking).
            self._t = Transport(self._port, timeout=5)
        except MpError:
            raise TransportError(f"cannot open {self._port}") from None
        try:
            # mpremote prints what it got when it cannot get a prompt; the error says it here.
            with contextlib.redirect_stdout(io.StringIO()):
                self._t.enter_raw_repl(soft_reset=True, timeout_overall=REPL_TIMEOUT_S)
        except (MpError, OSError):
            self.close()
            raise TransportError(f"no MicroPython REPL on {self._port} (a running meter keeps it closed: "
                                 "reflash such a board with `meterfw uf2`)") from None
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._t is not None:
            try:
                self._t.close()
            except OSError:
                pass  # the board reset and its port went with it
            self._t = None

    def _call(self, fn, *args, **kw):
        from mpremote.transport import TransportError as MpError
        try:
            return fn(*args, **kw)
        except _DeviceError as e:
            raise CommandError(f"the board refused: {e.last_line}") from None
        except (MpError, OSError) as e:
            raise TransportError(f"lost the REPL on {self._port}: {e}") from None

    def exec(self, code: str):
        return self._call(self._t.exec, code)

    def query(self, code: str, valid):
        """Run code that prints one repr(), and return that value, when valid(value)."""
        out = self.exec(code)
        try:
            value = ast.literal_eval(out.decode().strip())
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
            value = None
        if value is None or not valid(value):
            raise TransportError(f"the board on {self._port} answered the probe with {bytes(out[:60])!r}, "
                                 "not what MicroPython prints")
        return value

    def write_file(self, path: str, data: bytes, progress) -> None:
        self._call(self._t.fs_writefile, path, data, chunk_size=_CHUNK, progress_callback=progress)

    def sha256(self, path: str) -> bytes:
        return self._call(self._t.fs_hashfile, path, "sha256", chunk_size=_CHUNK)

    def reset(self) -> None:
        """machine.reset(): the board goes, with the port if it is USB; no answer to wait for."""
        self._call(self._t.exec_raw_no_follow, "import machine\nmachine.reset()")


class _DeviceError(Exception):
    """A traceback from code run on the board."""

    @property
    def last_line(self) -> str:
        lines = str(self).strip().splitlines()
        return lines[-1] if lines else "an error without a message"
