"""The journal's tail: an append-only file of the events SQLite has not indexed yet.

Committing an event to SQLite costs three WAL pages (the event's, the tag
index's and ``meta``'s), tens of microseconds on the publisher's path. The
tail is a file mapped into the publisher's memory: appending a batch is one
copy into the mapping and one 8-byte store that publishes it. Once that
store is done the bytes are in the OS page cache, shared with the file, and
survive the process being killed, which is what SQLite's
``synchronous=NORMAL`` (durability ``"batch"``) promises for a commit too;
neither survives a power cut. So the publisher appends each batch here,
delivers it, and lets the writer thread insert it into SQLite behind
(:mod:`saltbus.journal.tailed`); SQLite stays the index and the store every
reader uses.

Why a mapping and not ``write()``: the append is on every event's path to
its listeners. On the 2-vCPU machine the benchmarks run on, at 1,000 events/s
(each event arriving to a publisher gone idle), an append of one event took
7.6-9.4 µs with ``write()`` (ext4) and 4.8-4.9 µs with the copy (medians in
one daemon; ``benchmarks/NOTES.md``, §9).

The file: a header of :data:`MAGIC` and the *end* (u64, little-endian: the
offset where the published frames end), then frames up to the end, then
space the file system has allocated already (``posix_fallocate``: a full
disk fails the allocation, with a clear error, never a store into the
mapping). A frame: ``length`` (u32) and ``crc32`` (u32) of the payload, then
the payload: ``seq`` (i64), ``time`` (f64), the tag's length (u32), the tag
in UTF-8 and the body. An append copies its frames past the end first and
then stores the new end: a kill in between leaves bytes past the end, which
no reader reads. Everything before the end must check out; a frame that does
not is damage, which :meth:`TailLog.open` refuses.

Once SQLite holds everything the file holds, it is emptied (``reset``: the
end goes back to the header), so the file stays a megabyte or a few.

A tail written by saltbus before the mapping (frames from byte 0, no header;
there a frame cut short at the end of the file is a kill in the middle of a
``write()``) is read as before, and rewritten in this form when a publisher
opens it.
"""

from __future__ import annotations

import logging
import mmap
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
# The header: MAGIC, then the end of the published frames. As a frame's length,
# MAGIC's first four bytes are over MAX_PAYLOAD: no frame-only tail starts so.
MAGIC: Final = b"sbtail\x01\x00"
_END: Final = struct.Struct("<Q")
HEADER_SIZE: Final = len(MAGIC) + _END.size
# Space allocated ahead of the end; what a reset keeps, and past what it shrinks.
CAPACITY: Final = 1 << 20
SHRINK_ABOVE: Final = 8 * CAPACITY


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
    they end (``end``: the header's end, or in a tail without a header where
    the readable frames end). ``torn``: bytes of a last frame cut short by a
    kill in the middle of a ``write()`` (only a tail without a header has
    them). ``damage`` says where a frame that does not check out has data
    after it (only from :func:`scan`; :func:`decode` raises)."""

    records: list[JournalRecord]
    end: int
    damage: TailDamagedError | None = None
    torn: int = 0
    mapped: bool = False  # the file has the header (see the module's docstring)


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
    if not data.startswith(MAGIC):
        decoded = _scan_frames(data, 0, path)
        if decoded.damage is not None:
            return decoded
        return Decoded(decoded.records, decoded.end, torn=len(data) - decoded.end)
    if len(data) < HEADER_SIZE:
        return Decoded([], 0, TailDamagedError(path, len(data), None), mapped=True)
    (end,) = _END.unpack_from(data, len(MAGIC))
    if not HEADER_SIZE <= end <= len(data):
        return Decoded([], 0, TailDamagedError(path, len(MAGIC), None), mapped=True)
    decoded = _scan_frames(memoryview(data)[:end], HEADER_SIZE, path, published=True)
    return Decoded(decoded.records, end, decoded.damage, mapped=True)


def _scan_frames(
    data: bytes | memoryview, offset: int, path: Path, *, published: bool = False
) -> Decoded:
    """The frames from ``offset``. Unless ``published`` (every byte of ``data``
    was published by an end), a frame cut short or zeros at the end are the
    end of what was written, not damage."""
    records: list[JournalRecord] = []
    size = len(data)
    while offset < size:
        start = offset + _HEAD.size
        last = records[-1].seq if records else None
        if start > size:
            if published:
                return Decoded(records, offset, TailDamagedError(path, offset, last))
            break  # a header cut short
        length, crc = _HEAD.unpack_from(data, offset)
        end = start + length
        if not _FIXED.size <= length <= MAX_PAYLOAD:
            if not published and _only_zeros(data, offset):
                break  # space the file system gave the file and no write reached
            return Decoded(records, offset, TailDamagedError(path, offset, last))
        if end > size:
            if published:
                return Decoded(records, offset, TailDamagedError(path, offset, last))
            break  # a frame cut short by a kill in the middle of its write
        payload = bytes(data[start:end])
        if zlib.crc32(payload) != crc:
            if not published and (end == size or _only_zeros(data, end)):
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


def _only_zeros(data: bytes | memoryview, offset: int) -> bool:
    return not bytes(data[offset:]).strip(b"\0")


class TailLog:
    """The open tail file: :meth:`append` one batch at a time, :meth:`reset`
    once SQLite holds it all. Not thread-safe: the caller serialises."""

    def __init__(self, path: Path, fd: int, end: int, last_seq: int) -> None:
        # Use TailLog.open(): the file has the header, and `end` is its end.
        self.path = path
        self._fd = fd
        self._end = end
        self.last_seq = last_seq  # of the last record appended (0: none since open)
        self._capacity = 0
        self._map: mmap.mmap | None = None
        self._end_word: memoryview | None = None  # the header's end, as one u64
        capacity = max(CAPACITY, _rounded(end))
        self._allocate(capacity)
        self._map_capacity(capacity)

    @property
    def size(self) -> int:
        """Bytes of frames the tail holds."""
        return self._end - HEADER_SIZE

    @classmethod
    def open(cls, path: Path) -> tuple[TailLog, list[JournalRecord]]:
        """Open (or create, 0600) the tail at ``path``; return it and the
        records it holds. A torn last frame of a tail without the header is
        cut off with one log line; a damaged frame raises
        :class:`TailDamagedError`."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the journal tail {path}: {exc.strerror}") from exc
        try:
            data = read_all(fd)
            decoded = decode(data, path)
            if decoded.torn:
                log.warning(
                    "journal tail %s: dropped a frame cut short at byte %d "
                    "(%d bytes; the publisher was stopped in the middle of a write)",
                    path,
                    decoded.end,
                    decoded.torn,
                )
            end = decoded.end
            if not decoded.mapped:
                end = HEADER_SIZE + decoded.end
                fd = _with_header(path, fd, data[: decoded.end])
            tail = cls(path, fd, end, decoded.records[-1].seq if decoded.records else 0)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot use the journal tail {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        return tail, decoded.records

    def append(self, records: Sequence[JournalRecord]) -> None:
        """Copy the frames of ``records`` past the end, then publish them by
        moving the end. Raises JournalError for a record that cannot be
        stored, and OSError when the file cannot grow to take them (then
        nothing of the batch is published)."""
        if not records:
            return
        data = encode(records)
        start = self._end
        end = start + len(data)
        if end > self._capacity:
            self._grow(end)
        mapped, word = self._map, self._end_word
        if mapped is None or word is None:
            raise JournalError(f"the journal tail {self.path} is closed")
        mapped[start:end] = data
        # One aligned 8-byte store: a kill leaves the old end or the new one.
        word[0] = end
        self._end = end
        self.last_seq = records[-1].seq

    def reset(self) -> None:
        """Empty the file (everything in it is in SQLite)."""
        if self._end_word is not None:
            self._end_word[0] = HEADER_SIZE
        self._end = HEADER_SIZE
        if self._capacity > SHRINK_ABOVE:
            self._unmap()
            os.ftruncate(self._fd, CAPACITY)
            self._map_capacity(CAPACITY)

    def close(self) -> None:
        """Close the file; an empty tail is cut to nothing (a stopped bus
        keeps no allocated space)."""
        if self._fd < 0:
            return
        self._unmap()
        try:
            if self._end == HEADER_SIZE:
                os.ftruncate(self._fd, 0)
        except OSError as exc:
            log.error("journal tail %s: cannot cut it back: %s", self.path, exc)
        finally:
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

    def _grow(self, needed: int) -> None:
        capacity = max(2 * self._capacity, _rounded(needed))
        # Allocated while the old mapping stays: a full disk fails here and
        # leaves the tail as it was.
        self._allocate(capacity)
        self._unmap()
        self._map_capacity(capacity)

    def _allocate(self, capacity: int) -> None:
        """Give the file its first ``capacity`` bytes on disk, before they are
        mapped: a full disk fails here, with an error, and not as a SIGBUS at
        a store into the mapping."""
        size = os.fstat(self._fd).st_size
        if size < capacity:
            os.posix_fallocate(self._fd, size, capacity - size)

    def _map_capacity(self, capacity: int) -> None:
        """Map the file's first ``capacity`` bytes (allocated already)."""
        mapped = mmap.mmap(self._fd, capacity)
        with memoryview(mapped) as whole:
            self._end_word = whole[len(MAGIC) : HEADER_SIZE].cast("Q")
        self._map = mapped
        self._capacity = capacity

    def _unmap(self) -> None:
        word, self._end_word = self._end_word, None
        if word is not None:
            word.release()
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
        self._capacity = 0


def _with_header(path: Path, fd: int, frames: bytes) -> int:
    """Give the file open at ``fd`` the header, keeping ``frames``; return the
    descriptor to use. The header and the frames go in one ``write()``, which
    a kill does not split; frames are written to a new file renamed over the
    old one, so that a kill leaves one of the two whole."""
    content = MAGIC + _END.pack(HEADER_SIZE + len(frames)) + frames
    if not frames:
        os.ftruncate(fd, 0)
        os.pwrite(fd, content, 0)
        return fd
    fresh = path.with_name(path.name + ".new")
    new_fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(new_fd, content, 0)
        os.replace(fresh, path)
    except BaseException:
        os.close(new_fd)
        raise
    os.close(fd)
    return new_fd


def _rounded(size: int) -> int:
    """``size`` rounded up to whole CAPACITY units."""
    return -(-size // CAPACITY) * CAPACITY


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
