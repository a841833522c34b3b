"""Where a bus's journal lives: a data directory, and one file per bus in it.

A daemon restarted with the same settings must find the same file (its
sequence numbers continue from it), and ``saltbus history`` run against a
stopped daemon's ``sock_dir`` must find it too, so the name is derived only
from what identifies a bus: its resolved socket directory and socket prefix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from saltbus.errors import JournalError

ROOT_DATA_DIR = Path("/var/lib/saltbus")
JOURNAL_SUFFIX = ".sqlite3"
# 12 hex digits (48 bits) keep names short; a collision needs two sock_dirs
# on one host with the same prefix hashing alike, which is not a real risk.
_DIGEST_CHARS = 12


def default_data_dir(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """``/var/lib/saltbus`` as root, else ``$XDG_DATA_HOME/saltbus``, else
    ``~/.local/share/saltbus``.

    ``env`` and ``uid`` default to the process's own; they are parameters so
    that the choice can be tested without being root.
    """
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return ROOT_DATA_DIR
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "saltbus"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "saltbus"


def journal_path(data_dir: Path, sock_dir: Path, socket_prefix: str) -> Path:
    """The journal file of the bus whose sockets are ``sock_dir/<socket_prefix>_*.ipc``.

    ``sock_dir`` is resolved first, so that ``./run`` and its absolute path
    (or a symlink to it) name the same bus. A master and a minion sharing a
    ``sock_dir`` differ by ``socket_prefix`` and get separate journals.
    """
    if not socket_prefix or "/" in socket_prefix or socket_prefix in {".", ".."}:
        raise JournalError(f"socket prefix {socket_prefix!r} cannot be part of a file name")
    digest = hashlib.sha256(str(sock_dir.resolve()).encode("utf-8")).hexdigest()
    return data_dir / f"{socket_prefix}-{digest[:_DIGEST_CHARS]}{JOURNAL_SUFFIX}"
