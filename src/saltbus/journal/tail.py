"""The journal's tail: an append-only file of the events SQLite has not indexed yet.

Committing an event to SQLite costs three WAL pages (the event's, the tag
index's and ``meta``'s), tens of microseconds on the publisher's path. One
``write()`` of a frame to a file opened with ``O_APPEND`` costs a few: once it
has returned, the bytes are in the OS page cache and survive the process
being killed, which is what SQLite's ``synchronous=NORMAL`` (durability
``"batch"``) promises for a commit too; neither survives a power cut. So the
publisher appends each batch here, delivers it, and lets the writer thread
insert it into SQLite behind (:mod:`saltbus.journal.tailed`); SQLite stays the
index and the store every reader uses.

A frame: ``length`` (u32) and ``crc32`` (u32) of the payload, then the
payload: ``seq`` (i64), ``time`` (f64), the tag's length (u32), the tag in
UTF-8 and the body. A frame cut short by a kill in the middle of a write is
the last one in the file: it is dropped at the next start. A frame that does
not check out with more data behind it is damage, which :meth:`TailLog.open`
refuses.

Once SQLite holds everything the file holds, it is emptied (``reset``), so
the file stays a few megabytes at most.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from saltbus.errors import JournalError
from saltbus.journal.damage import RECOVER_COMMAND, JournalDamagedError
from saltbus.journal.records import JournalRecord

log = logging.getLogger(__name__)

TAIL_SUFFIX: Final = ".tail"
_HEAD: Final = struct.Struct("<II")  # payload length, crc32 of the payload
_FIXED: Final = struct.Struct("<qdI")  # seq, time, tag length
# A payload longer than this is not a frame this code wrote (bodies are bounded
# far below by the publisher's frame limit): a damaged length.
MAX_PAYLOAD: Final = 1 << 30


class TailDamagedError(JournalDamagedError):
    """The tail file holds a frame that does not check out, with data after it."""

    def __init__(
        self, path: Path, offset: int, after_seq: int | None, fix: str = RECOVER_COMMAND
    ) -> None:
        where = "at its start" if after_seq is None else f"after seq {after_seq}"
        super().__init__(
            path,
            f"is damaged at byte {offset} ({where}): the events it holds past that point "
            "cannot be read",
            fix,
        )
        self.offset = offset
        self.after_seq = after_seq


def tail_path(journal: Path) -> Path:
    """Where the tail of the journal at ``journal`` is kept."""
    return journal.with_name(journal.name + TAIL_SUFFIX)


def encode(records: Sequence[JournalRecord]) -> bytes:
    """The frames of ``records``, in order. Raises JournalError for a record
    the journal could not store either (a tag that is not valid Unicode, a seq
    outside 64 bits), so that the tail never holds what SQLite would refuse."""
    if len(records) == 1:  # an idle publisher's every batch
        record = records[0]
        try:
            tag = record.tag.encode()
            payload = _FIXED.pack(record.seq, record.time, len(tag)) + tag + record.body
        except (UnicodeError, struct.error, TypeError) as exc:
            raise JournalError(f"cannot journal the event with seq {record.seq}: {exc}") from exc
        return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload
    frames = []
    for record in records:
        try:
            tag = record.tag.encode()
            payload = b"".join((_FIXED.pack(record.seq, record.time, len(tag)), tag, record.body))
        except (UnicodeError, struct.error, TypeError) as exc:
            raise JournalError(f"cannot journal the event with seq {record.seq}: {exc}") from exc
        frames.append(_HEAD.pack(len(payload), zlib.crc32(payload)))
        frames.append(payload)
    return b"".join(frames)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a tail's bytes hold: the records of its whole frames, and where
    they end (``end``, less than the size when the last frame is torn or the
    file is damaged there). ``damage`` says where a frame that does not check
    out has data after it (only from :func:`scan`; :func:`decode` raises)."""

    records: list[JournalRecord]
    end: int
    damage: TailDamagedError | None = None


def decode(data: bytes, path: Path) -> Decoded:
    """The records in ``data``. A frame that does not check out is a torn
    write when nothing but it (or zeros) follows; anything else raises
    :class:`TailDamagedError`."""
    decoded = scan(data, path)
    if decoded.damage is not None:
        raise decoded.damage
    return decoded


def scan(data: bytes, path: Path) -> Decoded:
    """As :func:`decode`, but damage stops the scan instead of raising: the
    records before it are returned, for readers that take what is readable."""
    records: list[JournalRecord] = []
    offset = 0
    size = len(data)
    while offset < size:
        start = offset + _HEAD.size
        if start > size:
            break  # a header cut short
        length, crc = _HEAD.unpack_from(data, offset)
        end = start + length
        last = records[-1].seq if records else None
        if not _FIXED.size <= length <= MAX_PAYLOAD:
            if _only_zeros(data, offset):
                break  # space the file system gave the file and no write reached
            return Decoded(records, offset, TailDamagedError(path, offset, last))
        if end > size:
            break  # a frame cut short by a kill in the middle of its write
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            if end == size or _only_zeros(data, end):
                break  # the last frame, not all of it written
            return Decoded(records, offset, TailDamagedError(path, offset, last))
        seq, when, tag_length = _FIXED.unpack_from(payload)
        tag_end = _FIXED.size + tag_length
        if tag_end > length or (last is not None and seq <= last):
            return Decoded(records, offset, TailDamagedError(path, offset, last))
        try:
            tag = payload[_FIXED.size : tag_end].decode()
        except UnicodeDecodeError:
            return Decoded(records, offset, TailDamagedError(path, offset, last))
        records.append(JournalRecord(seq, when, tag, payload[tag_end:]))
        offset = end
    return Decoded(records, offset)


def _only_zeros(data: bytes, offset: int) -> bool:
    return not data[offset:].strip(b"\0")


class TailLog:
    """The open tail file: :meth:`append` one batch per ``write()``, :meth:`reset`
    once SQLite holds it all. Not thread-safe: the caller serialises."""

    def __init__(self, path: Path, fd: int, size: int, last_seq: int) -> None:
        # Use TailLog.open().
        self.path = path
        self._fd = fd
        self.size = size
        self.last_seq = last_seq  # of the last record appended (0: none since open)

    @classmethod
    def open(cls, path: Path) -> tuple[TailLog, list[JournalRecord]]:
        """Open (or create, 0600) the tail at ``path``; return it and the
        records it holds. A torn last frame is cut off with one log line; a
        damaged frame before the end raises :class:`TailDamagedError`."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the journal tail {path}: {exc.strerror}") from exc
        try:
            data = read_all(fd)
            decoded = decode(data, path)
            if decoded.end < len(data):
                log.warning(
                    "journal tail %s: dropped a frame cut short at byte %d "
                    "(%d bytes; the publisher was stopped in the middle of a write)",
                    path,
                    decoded.end,
                    len(data) - decoded.end,
                )
                os.ftruncate(fd, decoded.end)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot read the journal tail {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        last = decoded.records[-1].seq if decoded.records else 0
        return cls(path, fd, decoded.end, last), decoded.records

    def append(self, records: Sequence[JournalRecord]) -> None:
        """Write the frames of ``records`` in one ``write()``. Raises
        JournalError for a record that cannot be stored, and OSError when the
        file cannot be written (then nothing of the batch is left in it)."""
        if not records:
            return
        data = encode(records)
        size = len(data)
        try:
            # One write() unless the disk fills in the middle: then the next
            # one raises, saying why.
            written = os.write(self._fd, data)
            while written < size:
                written += os.write(self._fd, data[written:])
        except OSError:
            self._cut_back()
            raise
        self.size += written
        self.last_seq = records[-1].seq

    def reset(self) -> None:
        """Empty the file (everything in it is in SQLite)."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TailLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _cut_back(self) -> None:
        # A failed write may have left part of a frame: cut the file back to
        # the last whole frame, so that appends after recovery stay readable.
        try:
            os.ftruncate(self._fd, self.size)
        except OSError as exc:
            log.error("journal tail %s: cannot cut back a failed write: %s", self.path, exc)


def read_all(fd: int) -> bytes:
    """Every byte of the file open at ``fd``, read from its start."""
    chunks: list[bytes] = []
    position = 0
    while True:
        chunk = os.pread(fd, 1 << 20, position)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        position += len(chunk)
