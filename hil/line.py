"""The serial line between the host's port and the simulated MCU's UART.

The supervisor owns two pseudo-terminal masters: the user side (whose slave is the port that
host tools open like /dev/ttyACM0) and the device side (whose slave is the MicroPython
process's stdin/stdout). A `Line` moves bytes between them, one `Direction` per wire, from the
supervisor's poll loop: `poll_mask()` says what to wait for, `timeout()` when to wake up for
pacing, and `pump()` does one step.

Remote access (FR6): `attach_host(fd)` puts a TCP client's socket where the user pty was, with
the same pacing, until `detach_host()` (or the client closing) gives the line back to the pty.

Each direction is a small pipeline: read from the source master into `pending` (bounded, so a
host or device that outruns the line is held back by the pty buffers, as USB-CDC flow control
or a blocking UART TX ring would), then release bytes to the destination no faster than the
line allows (8N1: baud/10 bytes per second; each byte is released once its last bit would
have arrived, in ~1 ms slices). Later fault models (UART receive loss during flash stalls,
bit flips, drops, disconnects) belong in `Direction._on_the_wire`, the one place a byte
passes from sender to receiver.

The NAN (hil/nan.py): the line is the meter's network link, and a collector stands at its host
end. Each direction hands what it reads to the collector (`codec`) before it goes on the wire:
toward the meter the host's bytes become the profile's wire bytes (paced as such), toward the
host the meter's wire bytes become what the host reads (the packet overhead dropped still takes
its line time).
"""

from __future__ import annotations

import errno
import os
import select
import time
from typing import Callable

from hil.nan import Collector

# Bytes a direction holds between reading its source and releasing them on the line; beyond
# this the source is not read, so the sender's writes back up into the pty buffer.
PENDING_MAX = 4096
# After EIO on a master (no slave open), leave it alone this long instead of spinning.
_EIO_BACKOFF_S = 0.05
# Never ask poll() to wake up sooner than this; the kernel's timer slack makes it moot anyway.
_MIN_WAIT_S = 0.0005
# Paced bytes are released in slices of about this much line time, so a fast line costs one
# wake-up per millisecond rather than one per byte.
QUANTUM_S = 0.001

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class Direction:
    """One wire of the line: bytes from `src_fd` to `dst_fd`, paced at 8N1 if `baud` is set."""

    def __init__(self, name: str, src_fd: int, dst_fd: int, baud: int | None = None,
                 codec: Callable[[bytes], bytes] | None = None):
        self.name = name
        self.codec = codec  # what the NAN's collector makes of the bytes read (hil/nan.py)
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        # 8N1: a start bit, eight data bits and a stop bit per byte.
        self.bytes_per_s = None if baud is None else baud / 10.0
        self.quantum = 1 if baud is None else max(1, int(self.bytes_per_s * QUANTUM_S))
        self.pending = bytearray()
        # False while the receiver cannot take bytes (a powered-off MCU's UART): bytes are
        # still taken off the sender's side but go nowhere.
        self.receiver_up = True
        # Monotonic time at which the wire finished (or will finish) the last byte released.
        # While bytes are pending the UART sends them back to back, so byte k of a burst is
        # released no earlier than its last bit would arrive: late by up to one poll wake-up
        # (~1 ms), never early, and a late wake-up is caught up rather than lost.
        self.line_free_t = 0.0
        self.sink_blocked = False  # the last write hit a full destination buffer
        self._src_quiet_until = 0.0
        self.counters = {"read": 0, "delivered": 0, "dropped_receiver_off": 0}
        self.hung_up = False  # a socket end reported EOF or a reset: the line drops that client

    # -- what to wait for -------------------------------------------------------------------
    def wants_read(self, now: float) -> bool:
        return len(self.pending) < PENDING_MAX and now >= self._src_quiet_until

    def wants_writable(self) -> bool:
        return bool(self.pending) and self.sink_blocked

    def next_due(self, now: float) -> float | None:
        """Monotonic time at which the next byte may go on the wire, or None if idle/blocked."""
        if not self.pending or self.sink_blocked:
            return None
        if self.bytes_per_s is None:
            return now
        return self.line_free_t + min(self.quantum, len(self.pending)) / self.bytes_per_s

    # -- one step ---------------------------------------------------------------------------
    def read_source(self, now: float) -> None:
        room = PENDING_MAX - len(self.pending)
        if room <= 0:
            return
        try:
            data = os.read(self.src_fd, room)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                self.hung_up = True
                return
            if e.errno != errno.EIO:
                raise
            self._src_quiet_until = now + _EIO_BACKOFF_S
            return
        if not data:
            self.hung_up = True  # only a socket reads empty: a pty master says EIO instead
            return
        self.counters["read"] += len(data)
        if not self.receiver_up:
            self.counters["dropped_receiver_off"] += len(data)
            return
        wire = len(data)
        if self.codec is not None:
            data = self.codec(data)
        self._queue(data, now)
        if self.bytes_per_s is not None and wire > len(data):
            self.line_free_t += (wire - len(data)) / self.bytes_per_s  # the bytes the collector took off

    def put(self, data: bytes) -> None:
        """Bytes the line's own end sends (the NAN collector's acknowledgements)."""
        if self.receiver_up:
            self._queue(data, time.monotonic())

    def _queue(self, data: bytes, now: float) -> None:
        if not self.pending and self.bytes_per_s is not None:
            self.line_free_t = max(self.line_free_t, now)  # an idle wire starts shifting now
        self.pending += data

    def release(self, now: float) -> None:
        """Put as many pending bytes on the wire as the line has had time to carry."""
        if not self.pending or self.sink_blocked:
            return
        if self.bytes_per_s is None:
            n = len(self.pending)
        else:
            # The epsilon keeps float rounding from turning one whole byte time into 0.99.
            n = min(len(self.pending), int((now - self.line_free_t) * self.bytes_per_s + 1e-6))
            if n < min(self.quantum, len(self.pending)):
                return
        written = self._on_the_wire(memoryview(self.pending)[:n])
        if written < n:
            self.sink_blocked = True
        if written:
            del self.pending[:written]
            if self.bytes_per_s is not None:
                self.line_free_t += written / self.bytes_per_s

    def _on_the_wire(self, chunk: memoryview) -> int:
        """Deliver `chunk` to the receiver; returns how many bytes left the sender.

        The hook for fault models: a loss or noise model transforms or drops bytes here but
        still reports them as sent, because they did go out on the wire.
        """
        try:
            written = os.write(self.dst_fd, chunk)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up = True  # a TCP client went away: what it would have read is gone
            return len(chunk)
        self.counters["delivered"] += written
        return written

    def sink_unblocked(self, now: float) -> None:
        self.sink_blocked = False
        if self.bytes_per_s is not None:
            # The receiver held the line back; resume at line rate instead of bursting the backlog.
            self.line_free_t = max(self.line_free_t, now)

    def discard_pending(self) -> None:
        self.pending.clear()
        self.sink_blocked = False

    def stats(self) -> dict:
        return dict(self.counters, pending=len(self.pending))


class Line:
    """Both wires between the user master and the device master, and the NAN's collector at
    the host's end (the old profile alone passes bytes as they are)."""

    def __init__(self, user_fd: int, device_fd: int, baud: int | None = None, nan: Collector | None = None):
        self.baud = baud
        self.user_fd = user_fd
        self.host_fd: int | None = None  # a remote client's socket, while one is attached
        self.nan = nan or Collector()
        self.to_device = Direction("to_device", user_fd, device_fd, baud, self.nan.to_meter)
        self.to_host = Direction("to_host", device_fd, user_fd, baud, self.nan.from_meter)
        self.nan.send = self.to_device.put
        self.directions = (self.to_device, self.to_host)

    def attach_host(self, fd: int) -> None:
        """A remote client takes the host end of the line; the user pty waits meanwhile."""
        self.host_fd = fd
        self.to_device.src_fd = self.to_host.dst_fd = fd
        for d in self.directions:
            d.hung_up = False
            d._src_quiet_until = 0.0
        # What the device sent toward the pty and nobody read is not the new client's.
        self.to_host.discard_pending()

    def detach_host(self) -> None:
        """The remote client is gone: the line is the user pty's again."""
        self.host_fd = None
        self.to_device.src_fd = self.to_host.dst_fd = self.user_fd
        for d in self.directions:
            d.hung_up = False
            d._src_quiet_until = 0.0
        self.to_host.discard_pending()

    def host_hung_up(self) -> bool:
        return self.host_fd is not None and any(d.hung_up for d in self.directions)

    def set_device_up(self, up: bool) -> None:
        """The MCU's UART is powered (True) or not (False).

        Going down discards what was on its way to the device: those bytes were on the wire
        when the power went and no receiver took them; and a meter comes back in the NAN's old
        profile until it attaches again.
        """
        self.to_device.receiver_up = up
        if not up:
            self.to_device.discard_pending()
            self.nan.reset()

    def poll_mask(self, now: float) -> dict[int, int]:
        mask: dict[int, int] = {}
        for d in self.directions:
            if d.wants_read(now):
                mask[d.src_fd] = mask.get(d.src_fd, 0) | select.POLLIN
            if d.wants_writable():
                mask[d.dst_fd] = mask.get(d.dst_fd, 0) | select.POLLOUT
        return mask

    def timeout(self, now: float) -> float | None:
        """Seconds until pacing needs another step, or None if only fd events matter."""
        due = [t for t in (d.next_due(now) for d in self.directions) if t is not None]
        quiet = [d._src_quiet_until for d in self.directions if d._src_quiet_until > now]
        due += quiet
        if not due:
            return None
        return max(min(due) - now, _MIN_WAIT_S)

    def pump(self, now: float, events: dict[int, int]) -> None:
        for d in self.directions:
            if events.get(d.dst_fd, 0) & select.POLLOUT:
                d.sink_unblocked(now)
        for d in self.directions:
            if events.get(d.src_fd, 0) & _READABLE:
                d.read_source(now)
        for d in self.directions:
            d.release(now)

    def stats(self) -> dict:
        return {"baud": self.baud, **{d.name: d.stats() for d in self.directions}, "nan": self.nan.stats()}
