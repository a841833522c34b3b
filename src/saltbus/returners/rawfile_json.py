"""``rawfile_json``: events as JSON lines in a file, as Salt's returner of that name.

Each line is ``{"tag", "data", "seq", "time"}`` (Salt writes ``tag`` and
``data``; ``seq`` and ``time`` are saltbus's). Options
(``returner_options: {rawfile_json: {...}}``, or Salt's flat
``rawfile_json.filename`` key): ``filename`` (Salt's default
``/var/log/salt/events``); ``max_bytes`` (rotate once the file is this big,
0: never); ``rotate_seconds`` (rotate once the file's first line is this old,
0: never); ``compress`` (gzip rotated files, false); ``backup_count`` (rotated
files kept, 0: all); ``fsync`` (fsync after every batch, false).

Exactly once: the seq of the last line written is read back from the file
(and from the names of rotated files, ``<filename>.<last seq>[.gz]``) when the
returner starts, and events at or before it are skipped, so a batch retried
after its write went through is not written twice. A line cut short by a
crash is removed first.

logrotate: the file is reopened when its path no longer names the open file
(renamed or removed), checked before every batch, and when ``reopen()`` is
called (`saltbus serve` does on SIGHUP); ``copytruncate`` also works since
lines are appended.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known

DEFAULT_FILENAME: Final = "/var/log/salt/events"
OPTIONS: Final = (
    Option(
        "filename",
        "path",
        DEFAULT_FILENAME,
        "the file events are appended to",
        "rawfile_json.filename",
    ),
    Option("max_bytes", "integer", "0", "rotate once the file is this big (0: never)"),
    Option(
        "rotate_seconds", "seconds", "0", "rotate once the file's first line is this old (0: never)"
    ),
    Option("compress", "boolean", "false", "gzip rotated files"),
    Option("backup_count", "integer", "0", "rotated files kept (0: all)"),
    Option("fsync", "boolean", "false", "fsync after every batch"),
)
_TAIL_CHUNK: Final = 64 * 1024


class RawfileJsonReturner:
    """JSON lines to ``filename``, rotated by size or age, never a seq twice."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("rawfile_json", options, OPTIONS)
        self.path = Path(os.path.expanduser(str(options.get("filename") or DEFAULT_FILENAME)))
        self.max_bytes = _number(options, "max_bytes", int)
        self.rotate_seconds = _number(options, "rotate_seconds", float)
        self.backup_count = _number(options, "backup_count", int)
        self.compress = _flag(options, "compress")
        self.fsync = _flag(options, "fsync")
        self.last_seq: int | None = None
        self.skipped = 0  # events at or before last_seq: written before a retry
        self.rotations = 0
        self.reopens = 0
        self._file: IO[bytes] | None = None
        self._started = 0.0  # when the open file got its first line (wall clock)

    # -- the interface --------------------------------------------------------

    def event_return(self, events: list[dict[str, Any]]) -> None:
        self._open()
        lines = []
        last = self.last_seq
        for event in events:
            seq = event.get("seq")
            if isinstance(seq, int) and last is not None and seq <= last:
                self.skipped += 1
                continue
            record = {
                "tag": event["tag"],
                "data": event["data"],
                "seq": seq,
                "time": event.get("time"),
            }
            lines.append(to_json(record) + "\n")
            if isinstance(seq, int):
                last = seq
        if not lines:
            return
        if self._rotation_due():
            self._rotate()
            self._open()
        out = self._file
        assert out is not None
        try:
            if out.tell() == 0:
                self._started = time.time()
            out.write("".join(lines).encode("utf-8"))
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        except BaseException:
            self._close_file()  # the next attempt re-reads the tail and cuts a partial line
            self.last_seq = None
            raise
        self.last_seq = last

    def reopen(self) -> None:
        """Close the file; the next batch opens the path again (after logrotate)."""
        self.reopens += 1
        self._close_file()

    def close(self) -> None:
        self._close_file()

    def stats(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "skipped": self.skipped,
            "rotations": self.rotations,
            "reopens": self.reopens,
        }

    # -- the file -------------------------------------------------------------

    def _open(self) -> None:
        if self._file is not None and not self._moved():
            return
        self._close_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.path, "ab")  # noqa: SIM115 - kept open across batches, closed in close()
        try:
            tail_seq, first_time = _repair_and_read(self.path, out)
        except BaseException:
            out.close()
            raise
        self._file = out
        self._started = first_time if first_time is not None else time.time()
        known = [s for s in (tail_seq, self.last_seq, self._rotated_last_seq()) if s is not None]
        self.last_seq = max(known) if known else None

    def _moved(self) -> bool:
        assert self._file is not None
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._file.fileno())
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    def _close_file(self) -> None:
        out, self._file = self._file, None
        if out is not None:
            out.close()

    def _rotation_due(self) -> bool:
        out = self._file
        if out is None or out.tell() == 0:
            return False
        if self.max_bytes and out.tell() >= self.max_bytes:
            return True
        return bool(self.rotate_seconds) and time.time() - self._started >= self.rotate_seconds

    def _rotate(self) -> None:
        if self.last_seq is None:
            return
        self._close_file()
        target = self.path.with_name(f"{self.path.name}.{self.last_seq}")
        os.replace(self.path, target)
        self.rotations += 1
        if self.compress:
            _gzip(target)
        if self.backup_count:
            for old in self._rotated()[: -self.backup_count]:
                old.unlink(missing_ok=True)

    def _rotated(self) -> list[Path]:
        """Rotated files, oldest first."""
        found: list[tuple[int, Path]] = []
        prefix = self.path.name + "."
        for candidate in self.path.parent.glob(prefix + "*"):
            seq = candidate.name[len(prefix) :].removesuffix(".gz")
            if seq.isdigit():
                found.append((int(seq), candidate))
        return [p for _, p in sorted(found)]

    def _rotated_last_seq(self) -> int | None:
        rotated = self._rotated()
        if not rotated:
            return None
        return int(rotated[-1].name[len(self.path.name) + 1 :].removesuffix(".gz"))


def _repair_and_read(path: Path, out: IO[bytes]) -> tuple[int | None, float | None]:
    """Cut a line left unfinished by a crash; the seq of the last line and
    the time of the first."""
    size = out.seek(0, os.SEEK_END)
    if size == 0:
        return None, None
    with open(path, "rb") as reader:
        first = reader.readline()
        end = size
        tail = b""
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            reader.seek(start)
            tail = reader.read(end - start) + tail
            end = start
            if tail.count(b"\n") >= 2 or (end == 0 and b"\n" in tail):
                break
    if not tail.endswith(b"\n"):
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        out.truncate(keep)
        out.seek(0, os.SEEK_END)
        tail = tail[: tail.rfind(b"\n") + 1]
    lines = tail.splitlines()
    last_seq = _field(lines[-1], "seq") if lines else None
    first_time = _field(first, "time") if first.endswith(b"\n") else None
    return (
        last_seq if isinstance(last_seq, int) else None,
        float(first_time) if isinstance(first_time, int | float) else None,
    )


def _field(line: bytes, name: str) -> Any:
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed.get(name) if isinstance(parsed, dict) else None


def _gzip(path: Path) -> None:
    partial = path.with_name(path.name + ".gz.tmp")
    with open(path, "rb") as source, gzip.open(partial, "wb") as target:
        shutil.copyfileobj(source, target)
    os.replace(partial, path.with_name(path.name + ".gz"))
    path.unlink()


def _number(options: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = options.get(key, 0)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"rawfile_json: {key} must be a number, not {value!r}") from None
    if isinstance(value, bool) or number < 0:
        raise ConfigError(f"rawfile_json: {key} must be 0 or more, not {value!r}")
    return number


def _flag(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"rawfile_json: {key} must be true or false, not {value!r}")
