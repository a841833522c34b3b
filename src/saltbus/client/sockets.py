"""Blocking socket plumbing shared by the blocking clients."""

from __future__ import annotations

import errno
import os
import socket
import time

from saltbus.config import Address, Config
from saltbus.control import Auth, Refused, decode_control, encode_control
from saltbus.errors import (
    AccessDeniedError,
    NoPublisherError,
    RemoteProtocolError,
)
from saltbus.wire import FrameDecoder, Framing

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
        except PermissionError:
            sock.close()
            raise AccessDeniedError(
                f"permission denied on {describe(address)}: the bus belongs to another user; "
                "run as that user, or have the bus opened to a group you are in (sock_group)"
            ) from None
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


def read_secret(config: Config) -> str | None:
    """The secret this client presents to a tcp-mode saltbus bus (None in
    ipc mode, or when the bus admits clients without one). Read at each
    connect: the publisher makes a new one each time it starts."""
    if config.ipc_mode != "tcp":
        return None
    try:
        return config.secret_path.read_text().strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise AccessDeniedError(
            f"cannot read the bus's secret {config.secret_path}: permission denied; run as "
            "the bus's user or a member of its group (sock_group)"
        ) from None


def auth_frame(config: Config, framing: Framing) -> bytes | None:
    """The frame proving this client may use a tcp-mode saltbus bus (None when
    it need not: see :func:`read_secret`)."""
    secret = read_secret(config)
    return None if secret is None else encode_control(Auth(secret), framing)


def refusal_pending(sock: socket.socket, address: Address, timeout: float) -> None:
    """Raise :class:`AccessDeniedError` if the publisher refuses this new
    connection within ``timeout``. Only worth waiting for when the socket
    belongs to another user (otherwise the publisher always admits us)."""
    if isinstance(address, tuple):
        return
    try:
        owner = os.stat(address).st_uid
    except OSError:
        return
    if owner == os.geteuid():
        return
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536, socket.MSG_PEEK)
    except TimeoutError:
        return
    finally:
        sock.settimeout(None)
    if not data:
        raise AccessDeniedError(f"the publisher at {describe(address)} closed the connection")
    decoder = FrameDecoder(max_frame_size=65536)
    decoder.receive_data(data)
    for frame in decoder:
        message = decode_control(frame) if not frame.body else None
        if isinstance(message, Refused):
            raise AccessDeniedError(f"the publisher refused this client: {message.reason}")


def refused_reason(sock: socket.socket) -> None:
    """Raise :class:`AccessDeniedError` when what the publisher already sent on
    ``sock`` is a refusal (read without waiting)."""
    try:
        data = sock.recv(65536, socket.MSG_DONTWAIT)
    except OSError:
        return
    decoder = FrameDecoder(max_frame_size=65536)
    try:
        decoder.receive_data(data)
        frames = list(decoder)
    except RemoteProtocolError:
        return
    for frame in frames:
        message = decode_control(frame) if not frame.body else None
        if isinstance(message, Refused):
            sock.close()
            raise AccessDeniedError(f"the publisher refused this client: {message.reason}")
