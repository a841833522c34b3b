"""Bearer tokens of the HTTP bridge, kept in a file that stores only their hashes.

A token is a random secret (32 bytes from :mod:`secrets`) shown once, when it
is created; the file keeps its SHA-256 and what it may do: the tag patterns
(fnmatch, case-sensitive) of the events it may read and of those it may fire.
The file is written atomically with mode 0600, and re-read when it changes, so
``saltbus token revoke`` takes effect in a running bridge without a restart.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from saltbus.errors import ConfigError

SECRET_PREFIX: Final = "sbt_"
FILE_VERSION: Final = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class Grant:
    """What one request may do: read and fire events whose tags match the patterns."""

    name: str
    read: tuple[str, ...] = ()
    fire: tuple[str, ...] = ()
    _read_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _fire_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_read_re", _compile(self.read))
        object.__setattr__(self, "_fire_re", _compile(self.fire))

    @classmethod
    def everything(cls, name: str = "anonymous") -> Grant:
        """The grant of every request when authentication is off."""
        return cls(name, ("*",), ("*",))

    def may_read(self, tag: str) -> bool:
        return self._read_re is not None and self._read_re.match(tag) is not None

    def may_fire(self, tag: str) -> bool:
        return self._fire_re is not None and self._fire_re.match(tag) is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "read": list(self.read), "fire": list(self.fire)}


@dataclass(frozen=True)
class TokenRecord:
    """A token as the file keeps it: no secret, only its hash."""

    name: str
    sha256: str
    read: tuple[str, ...]
    fire: tuple[str, ...]
    created: str

    def grant(self) -> Grant:
        return Grant(self.name, self.read, self.fire)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "read": list(self.read),
            "fire": list(self.fire),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, item: Any) -> TokenRecord:
        if not isinstance(item, dict):
            raise TypeError("a token must be an object")
        return cls(
            str(item["name"]),
            str(item["sha256"]),
            tuple(str(p) for p in item.get("read", ())),
            tuple(str(p) for p in item.get("fire", ())),
            str(item.get("created", "")),
        )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens of one file. Reading is cheap: the file is parsed again only
    when its modification time or size changed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._records: dict[str, TokenRecord] = {}
        self._by_hash: dict[str, TokenRecord] = {}

    @classmethod
    def open(cls, path: Path) -> TokenStore:
        """The store of an existing file (:class:`ConfigError` when it is missing or invalid)."""
        store = cls(path)
        if not store.path.exists():
            raise ConfigError(
                f"no token file at {store.path}; create one with "
                f"`saltbus token create NAME --tokens {store.path}`"
            )
        store.refresh()
        return store

    def refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records, self._by_hash = None, {}, {}
            return
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        records = _read(self.path)
        self._records = {r.name: r for r in records}
        self._by_hash = {r.sha256: r for r in records}
        self._stamp = stamp

    def records(self) -> list[TokenRecord]:
        self.refresh()
        return list(self._records.values())

    def authenticate(self, secret: str | None) -> Grant | None:
        """The grant of a presented secret, or None when it is no (longer a) valid token."""
        if not secret:
            return None
        self.refresh()
        # A dict lookup by hash leaks, through timing, only how much of a
        # SHA-256 matched, which tells nothing about any secret.
        record = self._by_hash.get(hash_secret(secret))
        return None if record is None else record.grant()

    def create(self, name: str, read: Iterable[str] = ("*",), fire: Iterable[str] = ()) -> str:
        """Add a token and return its secret (the only time it is known)."""
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"token name {name!r}: use 1 to 64 letters, digits and . _ @ - "
                "(starting with a letter or digit)"
            )
        self.refresh()
        if name in self._records:
            raise ConfigError(f"a token named {name!r} exists in {self.path}; revoke it first")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            name,
            hash_secret(secret),
            tuple(read),
            tuple(fire),
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._write([*self._records.values(), record])
        return secret

    def revoke(self, name: str) -> None:
        self.refresh()
        if name not in self._records:
            raise ConfigError(f"no token named {name!r} in {self.path}")
        self._write([r for r in self._records.values() if r.name != name])

    def _write(self, records: list[TokenRecord]) -> None:
        text = json.dumps(
            {"version": FILE_VERSION, "tokens": [r.to_json() for r in records]}, indent=2
        )
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so the hashes are never readable by others.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._stamp = None
        self.refresh()


def _read(path: Path) -> list[TokenRecord]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise ConfigError(f"{path} is not a saltbus token file (version {FILE_VERSION})")
    try:
        return [TokenRecord.from_json(item) for item in document.get("tokens", [])]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"malformed token in {path}: {exc}") from None


def insecure_mode(path: Path) -> bool:
    """Whether a secrets file can be read by users other than its owner."""
    return bool(path.stat().st_mode & 0o077)
