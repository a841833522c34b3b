"""systemd's notify protocol (``Type=notify``), spoken here without libsystemd.

The service manager gives the daemon a datagram socket in ``$NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``); each message is
newline-separated ``KEY=VALUE`` lines: ``READY=1`` once the daemon serves,
``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1`` as a keep-alive when
the unit sets ``WatchdogSec=`` (``$WATCHDOG_USEC``), ``STOPPING=1`` at shutdown.
Without ``$NOTIFY_SOCKET`` (not run by systemd) every call does nothing.

A failed send is logged once and never stops the daemon: the bus serving
matters more than the service manager hearing about it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Self

log = logging.getLogger("saltbus.notify")


class Notifier:
    """The service manager's notification socket, or nothing when there is none.

    Use :meth:`from_env`; close it (or use it as a context manager) when done.
    """

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        self.address = address
        # Half of WatchdogSec, as systemd advises: a late ping still arrives in time.
        self.watchdog_interval = watchdog_interval
        self._sock: socket.socket | None = None
        self._failed = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` describe (from
        ``env``, os.environ by default), for the process ``pid`` (this one)."""
        environ = os.environ if env is None else env
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET %r: not a unix socket path or @name", address)
            address = None
        return cls(address, _watchdog_interval(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str | None = None) -> None:
        """The daemon serves: its sockets are bound."""
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def send(self, *lines: str) -> None:
        """One datagram of ``lines``; nothing when there is no socket."""
        if self._sock is None or self.address is None:
            return
        # An abstract socket's name starts with a NUL byte, written "@" by systemd.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8")
        try:
            self._sock.sendto(message, target)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._failed = True

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 every :attr:`watchdog_interval` until cancelled; from
        the event loop, so that a loop that stops turning stops the pings too."""
        import asyncio  # noqa: PLC0415

        if self._sock is None or self.watchdog_interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.asynccontextmanager
async def watchdog_task(notifier: Notifier) -> AsyncIterator[None]:
    """The watchdog pings of ``notifier`` run in the loop for the block's duration."""
    import asyncio  # noqa: PLC0415

    task = asyncio.ensure_future(notifier.keep_alive())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    text = env.get("WATCHDOG_USEC", "")
    if not text:
        return None
    # WATCHDOG_PID names the process the watchdog is for, when it is set.
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC %r: not a whole number of microseconds", text)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2
