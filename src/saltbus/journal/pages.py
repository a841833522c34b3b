"""Finding events in a journal file page by page, without SQLite's B-tree.

When an interior page of the events table is damaged, SQLite cannot reach
the leaf pages below it, though they are intact. This reads the file's pages
directly (the SQLite file format, https://sqlite.org/fileformat2.html): every
table-leaf page not on the freelist, every cell whose record has the shape of
an events row (seq as the rowid, time, tag, body). Only the seqs asked for
are decoded; events rows are never updated, so a stale copy of a row left on
a page SQLite moved is the same event.

The WAL is not read: pages it holds that were never checkpointed are found
by SQLite's own reads, or not at all.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from saltbus.journal.damage import SQLITE_MAGIC
from saltbus.journal.records import JournalRecord

DEFAULT_PAGE_SIZE: Final = 4096
_HEADER: Final = 100
_TABLE_LEAF: Final = 0x0D
_EVENT_COLUMNS: Final = 4
_FLOAT: Final = 7
# Serial types of integers and their sizes: SQLite writes a REAL column's
# value without a fraction as an integer (8 and 9 are the constants 0 and 1).
_INTEGER_SIZES: Final = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 8: 0, 9: 0}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``pos``: (value, position after it)."""
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | data[pos + 8], pos + 9


class _File:
    def __init__(self, data: mmap.mmap, *, header_intact: bool) -> None:
        self.data = data
        self.header_intact = header_intact
        if header_intact:
            size = int.from_bytes(data[16:18], "big")
            self.page_size = 65536 if size == 1 else size
            self.usable = self.page_size - data[20]
        else:
            # An overwritten header no longer says the page size: the one
            # saltbus's journals are made with (SQLite's default) is the guess.
            self.page_size = self.usable = DEFAULT_PAGE_SIZE
        self.pages = len(data) // self.page_size

    def page(self, number: int) -> bytes:
        # A slice of the map is a copy: one page at a time is in memory.
        start = (number - 1) * self.page_size
        return self.data[start : start + self.page_size]

    def free_pages(self) -> set[int]:
        """The pages on the freelist (what can be read of it)."""
        free: set[int] = set()
        if not self.header_intact:
            return free
        trunk = int.from_bytes(self.data[32:36], "big")
        while 0 < trunk <= self.pages and trunk not in free:
            free.add(trunk)
            page = self.page(trunk)
            count = int.from_bytes(page[4:8], "big")
            for i in range(min(count, (self.usable - 8) // 4)):
                free.add(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big"))
            trunk = int.from_bytes(page[0:4], "big")
        return free

    def payload(self, page: bytes, pos: int, size: int) -> bytes:
        """A cell's payload: its local part, then its overflow chain."""
        usable = self.usable
        most = usable - 35
        least = (usable - 12) * 32 // 255 - 23
        if size <= most:
            return page[pos : pos + size]
        local = least + (size - least) % (usable - 4)
        if local > most:
            local = least
        parts = [page[pos : pos + local]]
        left = size - local
        overflow = int.from_bytes(page[pos + local : pos + local + 4], "big")
        seen: set[int] = set()
        while left > 0:
            if not 0 < overflow <= self.pages or overflow in seen:
                raise ValueError("broken overflow chain")
            seen.add(overflow)
            chain = self.page(overflow)
            take = min(left, usable - 4)
            parts.append(chain[4 : 4 + take])
            left -= take
            overflow = int.from_bytes(chain[0:4], "big")
        return b"".join(parts)


def _event(rowid: int, payload: bytes) -> JournalRecord | None:
    """The events row in ``payload``, None if it is not one."""
    header_size, pos = _varint(payload, 0)
    types = []
    while pos < header_size:
        serial, pos = _varint(payload, pos)
        types.append(serial)
    if len(types) != _EVENT_COLUMNS or types[0] != 0:
        return None
    _seq, time_type, tag_type, body_type = types
    if time_type != _FLOAT and time_type not in _INTEGER_SIZES:
        return None
    if tag_type < 13 or tag_type % 2 != 1 or body_type < 12 or body_type % 2 != 0:
        return None
    pos = header_size
    if time_type == _FLOAT:
        (stamp,) = struct.unpack(">d", payload[pos : pos + 8])
        pos += 8
    else:
        width = _INTEGER_SIZES[time_type]
        raw = payload[pos : pos + width]
        stamp = float(int.from_bytes(raw, "big", signed=True) if width else time_type - 8)
        pos += width
    tag_len = (tag_type - 13) // 2
    tag = payload[pos : pos + tag_len].decode("utf-8")
    pos += tag_len
    body_len = (body_type - 12) // 2
    body = payload[pos : pos + body_len]
    if len(body) != body_len:
        return None
    return JournalRecord(rowid, stamp, tag, body)


def scan(path: Path, wanted: Callable[[int], bool]) -> Iterator[JournalRecord]:
    """The events rows whose seq is ``wanted`` found on the table-leaf pages of
    the file at ``path`` (in page order; a seq may come more than once).

    With its header overwritten, the file is read as pages of
    :data:`DEFAULT_PAGE_SIZE`, and its freelist is unknown: events that
    retention had deleted may then be found too.
    """
    with open(path, "rb") as file_object:
        if os.fstat(file_object.fileno()).st_size < DEFAULT_PAGE_SIZE:
            return
        with mmap.mmap(file_object.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield from _scan(data, wanted)


def _scan(data: mmap.mmap, wanted: Callable[[int], bool]) -> Iterator[JournalRecord]:
    file = _File(data, header_intact=data[: len(SQLITE_MAGIC)] == SQLITE_MAGIC)
    free = file.free_pages()
    for number in range(1, file.pages + 1):
        if number in free:
            continue
        page = file.page(number)
        start = _HEADER if number == 1 else 0
        if page[start] != _TABLE_LEAF:
            continue
        cells = int.from_bytes(page[start + 3 : start + 5], "big")
        for i in range(cells):
            found = _cell(file, page, start, i, wanted)
            if found is not None:
                yield found


def _cell(
    file: _File, page: bytes, start: int, index: int, wanted: Callable[[int], bool]
) -> JournalRecord | None:
    try:
        pointer = start + 8 + 2 * index
        pos = int.from_bytes(page[pointer : pointer + 2], "big")
        if not start + 8 <= pos < file.page_size:
            return None
        size, pos = _varint(page, pos)
        rowid, pos = _varint(page, pos)
        if not wanted(rowid):
            return None
        return _event(rowid, file.payload(page, pos, size))
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        return None  # a damaged cell: what it held is lost
