"""Blocking socket plumbing shared by the blocking clients."""

from __future__ import annotations

import errno
import os
import socket
import time

from saltbus.config import Address
from saltbus.errors import NoPublisherError

RETRY_INTERVAL = 0.05
# ECONNREFUSED and ENOENT mean no publisher (yet); EAGAIN a full backlog.
_RETRYABLE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN})


def describe(address: Address) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else os.fspath(address)


def connect(address: Address, timeout: float) -> socket.socket:
    """Connect to a bus socket, retrying for up to ``timeout`` seconds while no
    publisher is there (it may be starting). Raises :class:`NoPublisherError`."""
    deadline = time.monotonic() + timeout
    while True:
        family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(max(timeout, 0.5))
        try:
            sock.connect(address if isinstance(address, tuple) else os.fspath(address))
        except OSError as exc:
            sock.close()
            if exc.errno not in _RETRYABLE:
                raise NoPublisherError(
                    f"cannot connect to {describe(address)}: {exc.strerror or exc}"
                ) from None
            if time.monotonic() + RETRY_INTERVAL > deadline:
                reason = "no such socket" if exc.errno == errno.ENOENT else "connection refused"
                raise NoPublisherError(
                    f"no publisher listening at {describe(address)} ({reason}); "
                    "is `saltbus serve` (or a Salt daemon) running with this sock_dir?"
                ) from None
            time.sleep(RETRY_INTERVAL)
            continue
        sock.settimeout(None)
        return sock
