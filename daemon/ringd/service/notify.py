"""sd_notify: tell systemd READY, RELOADING, WATCHDOG, STATUS and STOPPING.

The protocol is one datagram of `KEY=value` lines to the Unix socket named by
$NOTIFY_SOCKET (a leading `@` means the abstract namespace). Without that
variable (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """A connection to systemd's notify socket, or nothing when not under systemd."""

    def __init__(self, address: str | None) -> None:
        self._sock: socket.socket | None = None
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.connect(address)
            # A datagram queue that is full (its reader stalled) must not block the
            # event loop: such a message is dropped instead.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        """Send one message; keys are the protocol's (READY=1 as `READY=1`)."""
        if self._sock is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items())
        # systemd gone or its queue full: the service must neither die nor wait.
        with contextlib.suppress(OSError):
            self._sock.send(message.encode())

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self) -> None:
        # systemd (253+) matches RELOADING to the reload it started by this timestamp.
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def stopping(self) -> None:
        self.send(STOPPING=1)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> None:
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
