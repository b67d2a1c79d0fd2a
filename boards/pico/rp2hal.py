# Board HAL for real rp2 hardware (RP2040 Pico, RP2350 Pico 2) under stock MicroPython. The
# boards' hal.py modules subclass Board here and set only what differs between the chips; pins,
# buses and geometry come from /board/board.json. Nothing touches hardware at import time: the
# tests import this module under the unix port with a fake `machine` in sys.modules.
import io
import json
import select
import time
from micropython import const, kbd_intr

TYPE_CHECKING = False
if TYPE_CHECKING:  # mypy resolves the annotations against the rp2 stubs; MicroPython ignores them
    import machine

_CONFIG = "/board/board.json"
_POLL = const(3)  # MP_STREAM_POLL: asyncio's StreamReader polls the link through ioctl
_POLLIN = const(1)
_POLLOUT = const(4)
_EINVAL = const(22)  # any other ioctl: the unix port asks for a file descriptor, and 0 would be stdin's
_REBASE_MS = const(3600000)
_SPI_READ = const(0x80)
_SPI_WRITE = const(0)
_LAST_OP = const(0x0FD)  # ADE7953 LAST_OP: the kind of the last successful communication
_LAST_OP_READ = const(0x35)

POWER_ON = "power-on"
WATCHDOG = "watchdog"
RESET = "reset"


def _write_all(dst, buf):
    # rp2's UART.write returns early when its tx ring fills and CDC can time out; the link
    # writes whole frames and ignores the count, so keep going while the port makes progress.
    mv = memoryview(buf)
    n = 0
    while n < len(mv):
        w = dst.write(mv[n:])
        if not w:
            break  # the port gave up: a lost reply is retried by the host
        n += w
    return n


class UartLink(io.IOBase):
    """UART as a stream whose readinto returns what is buffered and never waits.

    A bare rp2 UART keeps reading for as long as bytes arrive within timeout_char, which at line
    rate means until the buffer is full; bounding each read by any() keeps the event loop free.
    """

    def __init__(self, uart: machine.UART):
        self._uart = uart

    def readinto(self, buf):
        n = min(self._uart.any(), len(buf))
        if not n:
            return None
        return self._uart.readinto(memoryview(buf)[:n])

    def write(self, buf):
        return _write_all(self._uart, buf)

    def ioctl(self, req, arg):
        if req != _POLL:
            return -_EINVAL
        return (arg & _POLLIN if self._uart.any() else 0) | (arg & _POLLOUT)


class UsbLink(io.IOBase):
    """USB CDC (sys.stdin/stdout) as a non-blocking binary stream.

    stdin.readinto blocks until the whole buffer is filled, so bytes are taken one at a time
    while a zero-timeout poll says one is there (the CDC ring holds them; USB flow control
    means none are lost while flash stalls the CPU). Ctrl-C handling is switched off, because
    a 0x03 inside a binary frame would otherwise be eaten and raise KeyboardInterrupt. The cost:
    mpremote cannot break in while the meter runs; the recovery console or a UF2 reflash can.
    """

    def __init__(self, src, dst):
        self._src = src
        self._dst = dst
        self._poll = select.poll()
        self._poll.register(src, select.POLLIN)
        self._one = bytearray(1)
        kbd_intr(-1)

    def _ready(self):
        for _ in self._poll.ipoll(0):  # ipoll allocates nothing, unlike poll()'s list
            return True
        return False

    def readinto(self, buf):
        one = self._one
        n = 0
        while n < len(buf) and self._ready():
            self._src.readinto(one)
            buf[n] = one[0]
            n += 1
        return n or None

    def write(self, buf):
        return _write_all(self._dst, buf)

    def ioctl(self, req, arg):
        if req != _POLL:
            return -_EINVAL
        return (arg & _POLLIN if self._ready() else 0) | (arg & _POLLOUT)


def open_uart(cfg):
    import machine
    # A generous timeout lets a long frame wait for tx space; reads never wait (any() bounds them).
    return machine.UART(cfg["uart"], baudrate=cfg["baud"], tx=machine.Pin(cfg["tx"]),
                        rx=machine.Pin(cfg["rx"]), rxbuf=cfg["rxbuf"], txbuf=cfg.get("txbuf", 1024),
                        timeout=1000, timeout_char=100)


def open_link(cfg):
    if cfg["kind"] == "usb":
        import sys
        return UsbLink(sys.stdin.buffer, sys.stdout.buffer)
    return UartLink(open_uart(cfg))


class HanRadio:
    """The HAN radio: a network co-processor on a UART (as a Zigbee NCP sits beside a real
    meter's MCU), one text frame a line. receive() takes only the bytes the UART already holds,
    a byte at a time into a fixed line buffer, so it never waits and the heap does not grow with
    what arrives; a line longer than the buffer is noise, dropped whole up to its newline."""

    def __init__(self, uart: machine.UART, line_bytes: int):
        self._uart = uart
        self._line = bytearray(line_bytes)
        self._n = 0  # bytes of the line so far; -1 while an over-long one is being dropped
        self._one = bytearray(1)

    def send(self, frame):
        _write_all(self._uart, frame + b"\n")

    def receive(self):
        """The next whole frame received, or None when none has arrived yet."""
        uart, one = self._uart, self._one
        while uart.any():
            uart.readinto(one)
            n = self._n
            if one[0] == 10:
                self._n = 0
                if n > 0:
                    return bytes(memoryview(self._line)[:n])
            elif n >= len(self._line):
                self._n = -1
            elif n >= 0:
                self._line[n] = one[0]
                self._n = n + 1
        return None


def open_han_radio(cfg):
    """The co-processor board.json's han_radio names (uart, tx, rx, baud, rxbuf, line_bytes), or
    None: a bare Pico has none, and saying so beats pretending a radio."""
    if cfg is None:
        return None
    return HanRadio(open_uart(cfg), cfg.get("line_bytes", 256))


class McuRtc:
    """The MCU's own RTC: whole seconds, and reset to 2021 at every boot, so a meter's clock
    taken from it is invalid until set. For a board without a battery-backed RTC."""

    def __init__(self, rtc: machine.RTC):
        self._rtc = rtc

    def read_ms(self):
        return time.time() * 1000

    def write_ms(self, t_ms):
        t = time.gmtime(t_ms // 1000)  # indexed: the rp2 tuple has 8 fields, the unix port's 9
        self._rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


def _bcd(n):
    return (n // 10) << 4 | n % 10


def _unbcd(b):
    return (b >> 4) * 10 + (b & 0xF)


class Rv8803:
    """A battery-backed RV-8803 on I2C: date and time in BCD from register 0x10 (hundredths,
    seconds, minutes, hours, weekday bit, date, month, year). Writing the seconds restarts the
    hundredths, so a set is written at a whole second."""

    def __init__(self, i2c: machine.I2C, addr: int):
        self._i2c = i2c
        self._addr = addr
        self._buf = bytearray(8)

    def read_ms(self):
        b = self._buf
        self._i2c.readfrom_mem_into(self._addr, 0x10, b)
        t = time.mktime((2000 + _unbcd(b[7]), _unbcd(b[6] & 0x1F), _unbcd(b[5] & 0x3F), _unbcd(b[3] & 0x3F),
                         _unbcd(b[2] & 0x7F), _unbcd(b[1] & 0x7F), 0, 0))
        return t * 1000 + _unbcd(b[0]) * 10

    def write_ms(self, t_ms):
        t = time.gmtime(t_ms // 1000)
        self._i2c.writeto_mem(self._addr, 0x11, bytes((
            _bcd(t[5]), _bcd(t[4]), _bcd(t[3]), 1 << (t[6] + 1) % 7, _bcd(t[2]), _bcd(t[1]), _bcd(t[0] % 100))))


def open_rtc(cfg):
    import machine
    if cfg is None:
        return McuRtc(machine.RTC())
    i2c = machine.I2C(cfg["i2c"], scl=machine.Pin(cfg["scl"]), sda=machine.Pin(cfg["sda"]), freq=cfg["freq"])
    return Rv8803(i2c, int(cfg["addr"], 16))


class Clock:
    """Epoch ms: read from the RTC once at start-up, then carried on by the MCU's millisecond
    ticks (the RTC chips count whole seconds or hundredths; intervals want milliseconds).

    A set takes effect at once; it reaches the RTC at the next whole second, because writing the
    seconds restarts the chip's fraction of a second. ticks_diff holds for half the tick period
    (about six days), so the base moves forward every hour. An RTC that does not answer must not
    stop the meter from booting: the clock then starts where the MCU's own RTC stands (2021, so
    the health check's clock item fails and says so) and a set still takes effect.
    """

    def __init__(self, rtc):
        self._rtc = rtc
        try:
            self._base_ms = rtc.read_ms()
        except OSError:
            self._base_ms = time.time() * 1000
        self._base_ticks = time.ticks_ms()
        self._pending_s = None  # the whole second a set is still to be written at

    def time_ms(self):
        now = time.ticks_ms()
        t_ms = self._base_ms + time.ticks_diff(now, self._base_ticks)
        if time.ticks_diff(now, self._base_ticks) >= _REBASE_MS:
            self._base_ms = t_ms
            self._base_ticks = now
        if self._pending_s is not None and t_ms >= self._pending_s * 1000:
            self._pending_s = None
            self._write(t_ms - t_ms % 1000)
        return t_ms

    def _write(self, t_ms):
        try:
            self._rtc.write_ms(t_ms)
        except OSError:
            pass  # no RTC answering: the time holds until the next power-on

    def set_time_ms(self, t_ms):
        self._base_ms = t_ms
        self._base_ticks = time.ticks_ms()
        if t_ms % 1000:
            self._pending_s = t_ms // 1000 + 1
        else:
            self._pending_s = None
            self._write(t_ms)


# --- metrology front-end (ADE7953-like) -------------------------------------------------------

def reg_width(reg):
    """Register width in bytes. The ADE7953 encodes it in the address: 0x1xx 16-bit, 0x2xx 24-bit,
    0x3xx 32-bit (the 24-bit registers again, sign-extended), everything else 8-bit."""
    page = reg >> 8
    return page + 1 if 1 <= page <= 3 else 1


class SpiRegs:
    """Register access over SPI: address high, address low, read/write byte, then data, MSB first."""

    def __init__(self, spi: machine.SPI, cs: machine.Pin):
        self._spi = spi
        self._cs = cs
        self._hdr = bytearray(3)
        self._buf = bytearray(4)

    def read(self, reg):
        h = self._hdr
        h[0] = reg >> 8
        h[1] = reg & 0xFF
        h[2] = _SPI_READ
        data = memoryview(self._buf)[:reg_width(reg)]
        self._cs.value(0)
        try:
            self._spi.write(h)
            self._spi.readinto(data)
        finally:
            self._cs.value(1)
        return int.from_bytes(data, "big")

    def write(self, reg, value):
        n = reg_width(reg)
        frame = bytes((reg >> 8, reg & 0xFF, _SPI_WRITE)) + value.to_bytes(n, "big")
        self._cs.value(0)
        try:
            self._spi.write(frame)
        finally:
            self._cs.value(1)


class I2cRegs:
    """Register access over I2C: 16-bit register address, data MSB first."""

    def __init__(self, i2c: machine.I2C, addr: int):
        self._i2c = i2c
        self._addr = addr
        self._buf = bytearray(4)

    def read(self, reg):
        data = memoryview(self._buf)[:reg_width(reg)]
        self._i2c.readfrom_mem_into(self._addr, reg, data, addrsize=16)
        return int.from_bytes(data, "big")

    def write(self, reg, value):
        self._i2c.writeto_mem(self._addr, reg, value.to_bytes(reg_width(reg), "big"), addrsize=16)


def open_regs(cfg):
    import machine
    Pin = machine.Pin
    if cfg["bus"] == "i2c":
        i2c = machine.I2C(cfg["i2c"], scl=Pin(cfg["scl"]), sda=Pin(cfg["sda"]), freq=cfg["freq"])
        return I2cRegs(i2c, int(cfg["addr"], 16))
    spi = machine.SPI(cfg["spi"], baudrate=cfg["baud"], polarity=cfg["polarity"], phase=cfg["phase"],
                      sck=Pin(cfg["sck"]), mosi=Pin(cfg["mosi"]), miso=Pin(cfg["miso"]))
    return SpiRegs(spi, Pin(cfg["cs"], Pin.OUT, value=1))


class Accumulator:
    """Extends the front-end's wrapping energy register into a count that only grows.

    The register keeps counting while the MCU reboots, so the first reading is taken as it is:
    energy since the front-end powered up. Reads must come before half the range accumulates
    (use the 24-bit register: its 32-bit alias is sign-extended); a step of half the range or
    more is then no wrap but the front-end restarting (its registers do not survive its own
    power loss), and only what it counted since is added. Nothing is persisted here:
    continuity across front-end restarts is the application's.
    """

    def __init__(self, bits):
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last = -1
        self.count = 0

    def update(self, raw):
        raw &= self._mask
        d = raw if self._last < 0 else (raw - self._last) & self._mask
        if d >= self._half:
            d = raw
        self._last = raw
        self.count += d
        return self.count


class FrontEnd:
    """The metrology chip's active-energy accumulator, in mWh.

    The setup writes (read-without-reset, positive-only accumulation, calibration) are sent on
    first use, not in Board(): a dead front-end must not stop the bootloader or the recovery
    console from coming up. It fails the app's health check instead.
    """

    def __init__(self, regs, cfg):
        self._regs = regs
        self._reg = int(cfg["energy_reg"], 16)
        self._acc = Accumulator(8 * reg_width(self._reg))
        self._num, self._den = cfg["mwh_per_lsb"]
        self._setup = cfg.get("setup", ())
        self._ready = False

    def energy_mwh(self):
        if not self._ready:
            for reg, value in self._setup:
                self._regs.write(int(reg, 16), int(value, 16))
            self._ready = True
        return self._acc.update(self._regs.read(self._reg)) * self._num // self._den

    def fault(self):
        """None when the chip answers on its bus, else what is wrong. A bus with no chip on it
        reads all zeros (or ones), which the energy register alone cannot tell from a premises
        drawing nothing; the chip's LAST_OP register reads 0x35 after a successful read."""
        try:
            self.energy_mwh()
            op = self._regs.read(_LAST_OP)
        except OSError as e:
            return "front-end does not answer: %r" % e
        if op != _LAST_OP_READ:
            return "front-end does not answer on its bus (LAST_OP reads 0x%02x, not 0x35)" % op
        return None


# --- the board --------------------------------------------------------------------------------

class Board:
    name = "rp2"
    wdt_hw_max_ms = 8388  # machine.WDT refuses more; the RP2350 board raises it

    def __init__(self, config=None):
        import machine
        if config is None:
            with open(_CONFIG) as f:
                config = json.load(f)
        self.config = config
        self.defaults = config["defaults"]
        self.clock = Clock(open_rtc(config.get("rtc")))
        link = config["link"]
        self.link_in = self.link_out = open_link(link)
        # A UART paces the link (8N1: ten bits a byte); USB-CDC does not.
        self.link_bytes_per_s = link["baud"] // 10 if link["kind"] == "uart" else None
        self.heap_models = 0  # every part is silicon: none of the heap goes to models
        self.metrology = FrontEnd(open_regs(config["metrology"]), config["metrology"])
        self._led = machine.Pin(config["led"], machine.Pin.OUT, value=0)
        self.display_text = ""
        # The relay pins in config["relay"] are deliberately not claimed here: left in their
        # reset state (input, pulled down) the latching relay cannot move at boot (FR2). Its
        # driver, when added, pulses a coil only on an authenticated command.
        self.relay = None
        # No HAN radio is fitted to a bare Pico (its health item says so, absent, and a join is
        # refused, han_no_radio); a meter board with a co-processor names its UART in han_radio.
        self.han_radio = open_han_radio(config.get("han_radio"))

    def reset_cause(self):
        # rp2 reports only these two; machine.reset() also shows as WDT_RESET, which is why the
        # bootloader records requested resets in the boot control block itself.
        import machine
        cause = machine.reset_cause()
        if cause == machine.WDT_RESET:
            return WATCHDOG
        if cause == machine.PWRON_RESET:
            return POWER_ON
        return RESET

    def watchdog_ms(self, timeout_ms):
        return max(1, min(timeout_ms, self.config["watchdog_max_ms"], self.wdt_hw_max_ms))

    def watchdog(self, timeout_ms):
        # The hardware watchdog cannot be stopped once started; feed() is cheap, so no throttle.
        import machine
        return machine.WDT(timeout=self.watchdog_ms(timeout_ms))

    def energy_mwh(self):
        return self.metrology.energy_mwh()

    def energies_mwh(self):
        """(delivered, received): the front-end's one energy register counts delivered only."""
        return self.metrology.energy_mwh(), 0

    def metrology_fault(self):
        return self.metrology.fault()

    def reset(self):
        import machine
        machine.reset()

    def interface_checks(self):
        """The HAN is checked through han_radio by the application's driver; the NAN is the
        link's UART, which the image's NAN driver checks itself."""
        return {"han": None, "nan": None}

    def display(self, text):
        # A bare Pico has no meter display: keep the notice for status reads and light the LED
        # while one is showing.
        self.display_text = text
        self._led.value(1 if text else 0)
