"""`meterfw provision` over the REPL of a Pico running the stock firmware, here the rig's emulated
Pico (rp2040js, hil/pico/emulator.mjs) with its USB CDC port on a pty, checked on the flash the
emulator writes through: the files land byte for byte, a board with a meter is left alone, and
--wipe clears only the meter's own files."""
import json
import os
import shutil
import subprocess
import threading
import time
import tty
from pathlib import Path

import pytest
from littlefs import LittleFS

from meterfw.cli import main
from meterfw.errors import CommandError
from meterfw.paths import REPO
from meterfw.provision import LFS_CONFIG, device_files, flash_geometry, provision_repl, read_fs
from meterfw.uf2 import pico_flash_image

from test_uf2 import pico_firmware

PICO_RIG = REPO / "hil" / "pico"
FS_OFFSET = flash_geometry("pico")["offset"]
FS_BYTES = flash_geometry("pico")["block_size"] * flash_geometry("pico")["block_count"]

pytestmark = pytest.mark.timeout(900)


class EmulatedPico:
    """One power-on of the rig's emulated Pico, run by hand (no supervisor): `port` is the pty
    path of its USB CDC port, where mpremote connects. The chip's reset (machine.reset()) or
    watchdog ends the power-on; `wait_end()` says which. Use as a context manager: the node
    process is killed on the way out whatever happened."""

    def __init__(self, dir: Path, flash: bytes, bootrom: Path):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "flash.img").write_bytes(flash)
        (dir / "sim.json").write_text(json.dumps({"seed": 1, "created_s": int(time.time()), "pico": {
            "flash_bytes": len(flash), "erase_ms": 45, "page_program_ms": 0.4, "bootrom": str(bootrom.resolve()),
            "rtc_i2c": 1, "rtc_addr": 50, "ade_cs": 17}}))
        self.proc = None
        self.ctl_lines: list[str] = []
        self._fds: list[int] = []

    def __enter__(self):
        uart_master, uart_slave = os.openpty()  # the meter's UART0 line; unused here
        usb_master, usb_slave = os.openpty()  # node plays the host's USB end on the master
        for fd in (uart_slave, usb_slave):
            tty.setraw(fd)
        ctl_out_r, ctl_out_w = os.pipe()  # the emulator's control lines to us
        ctl_in_r, ctl_in_w = os.pipe()  # ours to it, read without blocking
        os.set_blocking(ctl_in_r, False)
        self.port = os.ttyname(usb_slave)
        self._log = open(self.dir / "console.log", "ab")
        try:
            self.proc = subprocess.Popen(
                ["node", str(PICO_RIG / "emulator.mjs"), str(self.dir), "power-on", str(ctl_out_w), str(ctl_in_r),
                 str(usb_master)],
                stdin=uart_slave, stdout=uart_slave, stderr=self._log, pass_fds=(usb_master, ctl_out_w, ctl_in_r))
        finally:
            for fd in (uart_slave, usb_master, ctl_out_w, ctl_in_r):
                os.close(fd)
        # The slave stays open here too: with no one holding it, the master reads EIO and node
        # would drop its USB reader before mpremote opens the port.
        self._fds = [uart_master, usb_slave, ctl_out_r, ctl_in_w]
        threading.Thread(target=self._read_ctl, args=(ctl_out_r,), daemon=True).start()
        return self

    def _read_ctl(self, fd: int) -> None:
        # Drained all along: the emulator writes a line per flash operation and would block on a full pipe.
        buf = b""
        while chunk := os.read(fd, 4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            self.ctl_lines += [line.decode() for line in lines]

    def wait_end(self, timeout_s: float) -> str | None:
        """'reset' or 'watchdog' once the chip has asked for it, within timeout_s; None if not.
        The process is then ended, as the supervisor does after its grace period: node does not
        exit by itself while its reads of the pty fds are pending."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cause = next((line for line in self.ctl_lines if line in ("reset", "watchdog")), None)
            if cause:
                try:
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                return cause
            time.sleep(0.1)
        return None

    def flash(self) -> bytes:
        return (self.dir / "flash.img").read_bytes()

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in self._fds:
            os.close(fd)
        self._log.close()


def _rig() -> Path:
    """The boot ROM, after checking the emulator can run; skips with how to get what is missing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the emulated Pico runs in rp2040js under node")
    if not (PICO_RIG / "node_modules" / "rp2040js").is_dir():
        pytest.skip(f"rp2040js is not installed: run `npm ci --prefix {PICO_RIG}`")
    bootrom = Path(os.environ.get("PICO_BOOTROM") or REPO.parent / "shared/rp2/rp2040-bootrom-B1.bin")
    if not bootrom.is_file():
        pytest.skip(f"no RP2040 boot ROM at {bootrom}: build raspberrypi/pico-bootrom (B1) and set PICO_BOOTROM=path")
    return bootrom


@pytest.fixture
def pico(tmp_path):
    """Starts an emulated Pico with stock MicroPython and the given filesystem (None: erased)."""
    bootrom, firmware = _rig(), pico_firmware().read_bytes()

    def start(fs: bytes | None = None, name: str = "pico") -> EmulatedPico:
        return EmulatedPico(tmp_path / name, pico_flash_image(firmware, fs), bootrom)
    return start


def test_provision_fresh_pico_over_its_repl(pico, capsys, images, keys_dir):
    with pico() as board:
        code = main(["provision", "--port", board.port, "--board", "pico", "--image", str(images["pico"]),
                     "--keys", str(keys_dir), "--serial", "MF0001", "--json"])
        captured = capsys.readouterr()
        assert (code, captured.err) == (0, ""), captured.err
        assert board.wait_end(60) == "reset"
        flash = board.flash()
    report = json.loads(captured.out)
    expected = device_files(images["pico"].read_bytes(), keys_dir, "pico", "MF0001")
    assert report["verified"] is True and report["seconds"] > 0
    assert {k: report[k] for k in ("port", "board", "serial", "files", "bytes")} == {
        "port": board.port, "board": "pico", "serial": "MF0001", "files": len(expected),
        "bytes": sum(map(len, expected.values()))}
    files, dirs = read_fs(flash[FS_OFFSET:], "pico")
    assert files == expected
    assert {"/data", "/boot", "/slots", "/bootloader", "/board", "/keys"} <= set(dirs)


def _old_meter_fs() -> bytes:
    """A filesystem with an old meter's data and slot, no /main.py (so the REPL is free), and a
    file of the owner's."""
    geo = flash_geometry("pico")
    fs = LittleFS(block_size=geo["block_size"], block_count=geo["block_count"], **LFS_CONFIG)
    for d in ("/slots", "/data", "/data/iv", "/bootloader"):
        fs.mkdir(d)
    for path, data in (("/slots/b.mfw", b"old image"), ("/data/iv/0", b"intervals"), ("/bootloader/x.mpy", b"old"),
                       ("/notes.txt", b"the owner's")):
        with fs.open(path, "wb") as f:
            f.write(data)
    return bytes(fs.context.buffer)


def test_pico_with_meter_data_is_refused_untouched_then_wiped(pico, images, keys_dir):
    with pico(_old_meter_fs()) as board:
        before = board.flash()
        with pytest.raises(CommandError, match="already holds meter data .* give --wipe"):
            provision_repl(board.port, images["pico"].read_bytes(), keys_dir, "pico")
        assert board.flash() == before

        report = provision_repl(board.port, images["pico"].read_bytes(), keys_dir, "pico", wipe=True)
        assert board.wait_end(60) == "reset"
        files, dirs = read_fs(board.flash()[FS_OFFSET:], "pico")
    # unique_id() is all zeros in rp2040js, so the default serial is the same on every emulated board
    assert report["serial"].startswith("MF")
    expected = device_files(images["pico"].read_bytes(), keys_dir, "pico", report["serial"])
    assert files == {**expected, "/notes.txt": b"the owner's"}
    assert "/data/iv" not in dirs


def test_image_for_another_board_is_refused_before_the_port_is_opened(images, keys_dir, tmp_path):
    with pytest.raises(CommandError, match="image is for board sim, not pico"):
        provision_repl(str(tmp_path / "no-such-port"), images["v1"].read_bytes(), keys_dir, "pico")
