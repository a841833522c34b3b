"""Binding the bus's two sockets safely: the directory, stale and live sockets, modes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from saltbus.config import Address, Config
from saltbus.errors import ConfigError, PublisherRunningError

SOCK_DIR_MODE: Final = 0o700
SOCKET_MODE: Final = 0o600
LISTEN_BACKLOG: Final = 1024
LOCK_WAIT: Final = 0.2


def ensure_sock_dir(path: Path) -> bool:
    """Create ``sock_dir`` 0700 when missing; True when it was created. An
    existing directory keeps its mode: it may be Salt's own, shared on purpose."""
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"sock_dir {path} is a file, not a directory; give a directory as --sock-dir "
            "(sock_dir in the config)"
        )
    created = not path.exists()
    try:
        path.mkdir(mode=SOCK_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create sock_dir {path}: {exc.strerror}; give a --sock-dir this user can create"
        ) from None
    if not path.is_dir():
        raise ConfigError(f"sock_dir {path} exists and is not a directory")
    return created


def lock_path(sock_dir: Path, socket_prefix: str) -> Path:
    """:attr:`Config.lock_path <saltbus.config.Config.lock_path>` of the bus
    whose sockets are named by ``socket_prefix`` (which a journal's file name keeps)."""
    return sock_dir / f".{socket_prefix}.saltbus.lock"


def lock_is_held(path: Path) -> bool:
    """Whether a publisher holds the bus lock at ``path`` now (as
    :meth:`Config.served_by_saltbus <saltbus.config.Config.served_by_saltbus>`
    judges it: a shared lock that cannot be taken at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # another user's file: its presence is all we can see
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class BusLock:
    """An advisory lock next to the sockets, so two saltbus daemons starting at
    once cannot both decide the sockets are stale. The kernel drops it when the
    holder dies, so a kill -9 leaves nothing to clean up.

    Made from the bus's Config, or from the lock file's path (the journal
    commands, which lock a bus to keep its publisher from starting meanwhile).
    """

    def __init__(self, config: Config | Path) -> None:
        self.path = config if isinstance(config, Path) else config.lock_path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the bus's lock file {self.path}: {exc.strerror}; give a "
                "--sock-dir this user can write to"
            ) from None
        # Clients take a shared lock for an instant to learn whether a publisher
        # holds this one (Config.served_by_saltbus); only a lock held for longer
        # than LOCK_WAIT is another publisher's.
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise PublisherRunningError(
                        f"another saltbus publisher holds {self.path}; is `saltbus serve` "
                        "already running?"
                    ) from None
                time.sleep(0.01)
        self._fd = fd

    def release(self) -> None:
        # The file stays: deleting it before unlocking would let a starter that
        # already opened it lock a deleted file while another creates a new one,
        # and clients judge liveness by the lock, not by the file.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BusLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EAGAIN: the backlog of a live, busy publisher is full.
        return exc.errno == errno.EAGAIN
    finally:
        probe.close()
    return True


def bind_listener(address: Address) -> socket.socket:
    """A listening socket at ``address``: refuses a live publisher's socket,
    removes a dead one's, and leaves the socket file at mode 0600."""
    if isinstance(address, tuple):
        return _bind_tcp(address)
    if address.exists() or address.is_symlink():
        if not stat.S_ISSOCK(address.lstat().st_mode):
            raise ConfigError(f"{address} exists and is not a socket; refusing to replace it")
        if _is_live(address):
            raise PublisherRunningError(f"a publisher is already serving {address}")
        address.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(address))
        os.chmod(address, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {address}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _bind_tcp(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PublisherRunningError(
                f"{address[0]}:{address[1]} is already in use; is a publisher running there?"
            ) from None
        raise ConfigError(f"cannot bind {address[0]}:{address[1]}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def remove_socket_file(address: Address) -> None:
    if isinstance(address, Path):
        with contextlib.suppress(FileNotFoundError):
            address.unlink()


def peer_label(sock: socket.socket | None) -> str:
    """Who is on the other end, for log lines: pid and uid over unix sockets."""
    if sock is None:
        return "unknown peer"
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return "unix peer"
        pid, uid, _gid = (int.from_bytes(creds[i : i + 4], "little") for i in (0, 4, 8))
        return f"pid {pid} uid {uid}"
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "tcp peer"
    return f"{host}:{port}"
