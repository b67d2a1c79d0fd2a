# Simulated meter parts that keep their state outside the MCU (see simhw.py): the latching
# service relay, the meter display and the RTC's battery-backed register. Each one holds a host
# file handle opened before the flash filesystem replaces the root, so it works all run long.
import json
import select
import time

_RELAY_RECORD = 64  # the relay file is rewritten in place, padded to a fixed width


def _open_rw(path, blank):
    try:
        return open(path, "r+b")
    except OSError:
        with open(path, "wb") as f:
            f.write(blank)
        return open(path, "r+b")


class LatchingRelay:
    """A bistable relay: a coil pulse moves it, and it stays where it is without power.

    DIR/relay.json holds its position and how often it has moved. It is the relay's physical
    truth, not the meter's belief, so the rig can assert that nothing but an authenticated
    command ever moved it.
    """

    def __init__(self, path):
        self._f = _open_rw(path, self._pack(True, 0))
        self._f.seek(0)
        raw = self._f.read()
        try:
            d = json.loads(raw)
            self._closed, self.actuations = bool(d["closed"]), int(d["actuations"])
        except (ValueError, KeyError, TypeError):
            self._closed, self.actuations = True, 0  # factory fitted closed: supply on
            self._write()

    @staticmethod
    def _pack(closed, actuations):
        raw = json.dumps({"closed": closed, "actuations": actuations}).encode()
        return raw + b" " * (_RELAY_RECORD - len(raw) - 1) + b"\n"

    def _write(self):
        self._f.seek(0)
        self._f.write(self._pack(self._closed, self.actuations))
        self._f.flush()

    def closed(self):
        """The latched position, read from the auxiliary contact: no coil is energised."""
        return self._closed

    def actuate(self, closed):
        """Pulse the set or reset coil. A pulse counts as an actuation even if already there."""
        self._closed = bool(closed)
        self.actuations += 1
        self._write()


class DisplayLog:
    """The meter's display: every notice shown is appended to DIR/display.log as
    `epoch_s text` lines (true time, not the meter's clock), so the rig can read what a
    customer saw and when."""

    def __init__(self, path):
        self._f = open(path, "ab")
        self.text = ""

    def show(self, text):
        self.text = text
        self._f.write(b"%d %s\n" % (int(time.time()), text.replace("\n", " ").encode()))
        self._f.flush()


class RtcBackup:
    """The RTC's battery-backed correction: a time set survives MCU resets and power cuts, as it
    does on a meter with a backed-up clock. DIR/rtc.json holds what time sets added to the
    offset the rig injected (sim.json clock_offset_s), so both compose."""

    def __init__(self, path):
        self._f = _open_rw(path, b"{}\n")
        self._f.seek(0)
        try:
            self.adjust_ms = int(json.loads(self._f.read()).get("adjust_ms", 0))
        except (ValueError, TypeError, AttributeError):
            self.adjust_ms = 0

    def store(self, adjust_ms):
        self.adjust_ms = adjust_ms
        raw = json.dumps({"adjust_ms": adjust_ms, "stored_s": int(time.time())}).encode()
        self._f.seek(0)
        self._f.write(raw + b" " * (_RELAY_RECORD - len(raw) - 1) + b"\n")
        self._f.flush()


class HanRadio:
    """The meter's HAN radio (a Zigbee network co-processor, as a real meter has one behind a
    UART) on the rig's simulated medium (hil/supervisor/han.py): one text frame a line, out on
    fd 5, in on fd 6. A reopened pipe blocks, so a byte is read only when poll says one waits."""

    def __init__(self, tx_fd, rx_fd):
        self._tx = open("/dev/fd/%d" % tx_fd, "wb")
        self._rx = open("/dev/fd/%d" % rx_fd, "rb")
        self._poll = select.poll()
        self._poll.register(self._rx, select.POLLIN)
        self._line = bytearray()

    def send(self, frame):
        self._tx.write(frame + b"\n")

    def receive(self):
        """The next whole frame received, or None when none has arrived yet."""
        while self._poll.poll(0):
            b = self._rx.read(1)
            if not b:
                return None
            if b == b"\n":
                frame = bytes(self._line)
                self._line = bytearray()
                return frame
            if len(self._line) < 256:  # noise on the air is not a frame to keep
                self._line += b
        return None
