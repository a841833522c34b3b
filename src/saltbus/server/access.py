"""Who may use the bus: file modes, peer credentials, and the tcp-mode secret.

The seed's promise is that only the user the bus runs as can reach it. File
modes alone keep it only until someone loosens them, so each unix connection's
credentials (SO_PEERCRED) are checked as well: the daemon's own uid, root when
``allow_root`` is set, or a member of ``sock_group``. Over TCP the kernel gives
no credentials; saltbus's clients present a secret read from a file that has
the sockets' modes, and Salt's clients, which cannot, are admitted only when
``tcp_allow_unauthenticated`` is set.
"""

from __future__ import annotations

import contextlib
import grp
import hmac
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saltbus.config import Address, Config
from saltbus.errors import ConfigError

log = logging.getLogger("saltbus.server")

_CREDS = struct.Struct("3i")
PRIVATE_DIR_MODE: Final = 0o700
GROUP_DIR_MODE: Final = 0o750
PRIVATE_FILE_MODE: Final = 0o600
GROUP_FILE_MODE: Final = 0o660


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket | None) -> PeerCredentials | None:
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    except OSError:
        return None
    return PeerCredentials(*_CREDS.unpack(raw))


def process_groups(pid: int) -> frozenset[int]:
    """The supplementary groups of a process (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


def resolve_group(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"sock_group {name!r} is not a group on this system") from None


class AccessPolicy:
    """Decides, per connection, whether the peer may use the bus."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.uid = os.geteuid()
        self.gid = resolve_group(config.sock_group)
        self._secret: str | None = None

    @property
    def tcp_needs_secret(self) -> bool:
        return self.config.ipc_mode == "tcp" and not self.config.tcp_allow_unauthenticated

    # -- files -------------------------------------------------------------

    def prepare_sock_dir(self, created: bool) -> None:
        """Give a directory the daemon created the mode (and group) it should have."""
        if not created:
            return
        path = self.config.sock_dir
        if self.gid is not None:
            os.chown(path, -1, self.gid)
            os.chmod(path, GROUP_DIR_MODE)
        else:
            os.chmod(path, PRIVATE_DIR_MODE)

    def secure_file(self, path: Path) -> None:
        """Sockets, lock and secret files: 0600, or 0660 with the group."""
        if self.gid is not None:
            os.chown(path, -1, self.gid)
            os.chmod(path, GROUP_FILE_MODE)
        else:
            os.chmod(path, PRIVATE_FILE_MODE)

    def secure_address(self, address: Address) -> None:
        if isinstance(address, Path):
            self.secure_file(address)

    def write_secret(self) -> None:
        """A fresh secret for this run (tcp mode), in a file only the bus's users read."""
        if not self.tcp_needs_secret:
            return
        path = self.config.secret_path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        secret = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        self.secure_file(path)
        self._secret = secret

    def remove_secret(self) -> None:
        if self._secret is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.secret_path.unlink()
            self._secret = None

    # -- connections -------------------------------------------------------

    def refusal(self, sock: socket.socket | None) -> str | None:
        """Why a new unix connection is refused, or None when it may go on."""
        creds = peer_credentials(sock)
        if creds is None:
            return None  # tcp: decided by the secret
        if creds.uid == self.uid:
            return None
        if creds.uid == 0:
            if self.config.allow_root:
                return None
            return "root is not allowed on this bus (set allow_root to allow it)"
        if self.gid is not None:
            if creds.gid == self.gid or self.gid in process_groups(creds.pid):
                return None
            return f"uid {creds.uid} is not in the bus's group (gid {self.gid})"
        return (
            f"uid {creds.uid} is not the bus's user (uid {self.uid}); give a group "
            "access with sock_group"
        )

    def secret_ok(self, presented: str) -> bool:
        return self._secret is not None and hmac.compare_digest(presented, self._secret)
