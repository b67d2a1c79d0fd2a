"""The client bridge: the user pty the host tools open, the device pty the MCU's process reads
and writes (hil.line pumps bytes between the two), the emulated Pico's USB CDC pty, and the
loopback TCP port that bridges one remote client at a time to the line (FR6)."""

from __future__ import annotations

import os
import socket
import termios
import tty

from .common import TTY_LINK, USB_LINK, SimError, _link


class ClientBridge:
    """The Supervisor's ptys and TCP listener (a mixin: the state lives in Supervisor)."""

    def _open_ptys(self) -> None:
        self.user_master, self.user_slave = os.openpty()
        self.dev_master, self.dev_slave = os.openpty()
        self._fds += [self.user_master, self.user_slave, self.dev_master, self.dev_slave]
        # Keeping our own user-slave fd open means the host closing the port never makes the
        # master see EIO, and the raw settings persist between host sessions.
        tty.setraw(self.user_slave)
        self._make_device_tty_raw()
        for fd in (self.user_master, self.dev_master):
            os.set_blocking(fd, False)
        self.port = os.ttyname(self.user_slave)
        _link(self.dir / TTY_LINK, self.port)
        if self.board == "pico":
            # The chip's USB CDC port (its REPL): the emulator holds the master across boots'
            # processes in turn; we keep the slave open so the master never sees a hang-up.
            self.usb_master, usb_slave = os.openpty()
            self._fds += [self.usb_master, usb_slave]
            tty.setraw(usb_slave)
            self.usb_port = os.ttyname(usb_slave)
            _link(self.dir / USB_LINK, self.usb_port)

    def _make_device_tty_raw(self) -> None:
        tty.setraw(self.dev_slave)
        attrs = termios.tcgetattr(self.dev_slave)
        # The unix port's reads return what is there, even nothing; the emulator's reader
        # takes a read of nothing for the end of the line, so its reads wait for a byte.
        attrs[6][termios.VMIN] = 1 if self.board == "pico" else 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self.dev_slave, termios.TCSANOW, attrs)

    # -- remote access (FR6) ----------------------------------------------------------------
    def _listen(self, port: int) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            ls.bind(("127.0.0.1", port))
        except OSError as e:
            ls.close()
            raise SimError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
        ls.listen(4)
        ls.setblocking(False)
        self._listener = ls
        self.tcp_port = ls.getsockname()[1]  # port 0 asks for any free one
        self.log(f"listening on 127.0.0.1:{self.tcp_port}")

    def _accept(self) -> None:
        try:
            conn, peer = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self._client_peer = conn, f"{peer[0]}:{peer[1]}"
        self.line.attach_host(conn.fileno())
        self.log(f"tcp client {self._client_peer} connected")
        self.write_state()

    def _drop_client(self, why: str) -> None:
        self.line.detach_host()
        self.log(f"tcp client {self._client_peer} gone ({why})")
        self._client.close()
        self._client = self._client_peer = None
        self.write_state()
