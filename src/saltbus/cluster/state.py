"""What a node remembers between runs: per origin, the last event it delivered.

The importer delivers an event, then acknowledges it to NATS. A crash in
between makes NATS deliver it again, so exactly-once needs to know, per
origin node (and that node's numbering, its epoch), the highest origin
sequence number already delivered here. That is saved in a small file after
each batch, together with the local sequence number it is true as of and
the stream seq up to which every message was handled here (where a lost
consumer is made again from: see link.py); at
start the local journal is read from there on, because every delivered event
carries its origin (:data:`ORIGIN_KEY`) and the journal has everything fired,
also what the file had no time to record. The file is an optimisation, the
journal the truth.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from saltbus.errors import JournalError, RemoteProtocolError
from saltbus.journal.store import Journal
from saltbus.wire import unpack_body

log = logging.getLogger("saltbus.cluster")

ORIGIN_KEY: Final = "_saltbus_origin"
ORIGIN_BYTES: Final = ORIGIN_KEY.encode()
# The marker's key as msgpack writes it (a fixstr of 15 bytes; packers use the
# shortest form): a body without these bytes cannot be an imported event. The
# importer puts it first in the data map, where marked_first() finds it undecoded.
_ORIGIN_KEY_PACKED: Final = bytes((0xA0 | len(ORIGIN_BYTES),)) + ORIGIN_BYTES
_MAP_HEADER_SIZE: Final = {0xDE: 3, 0xDF: 5}  # map16, map32; a fixmap is 1
# The packed key's first byte (a 15-byte str's header) is rare in a body, and
# memchr finds it fast; a search for the whole key steps a byte at a time
# through text made of the key's letters (1.3 µs in a 500-byte job return).
_KEY_HEADER: Final = _ORIGIN_KEY_PACKED[0]
# Past this many header bytes that start no key, the rest is searched whole.
_HEADER_HITS: Final = 8
# Epochs kept per origin: an origin's older numberings stop mattering once its
# new one has been seen for a while; a few are kept for events still in flight.
EPOCHS_KEPT: Final = 4

Origin = tuple[str, int]  # (node name, that node's epoch)


def origin_marker(node: str, epoch: int, seq: int, stamp: Any = None) -> dict[str, Any]:
    """What an imported event carries under :data:`ORIGIN_KEY`."""
    marker: dict[str, Any] = {"node": node, "seq": seq, "epoch": epoch}
    if stamp is not None:
        marker["stamp"] = stamp
    return marker


def marked_first(body: bytes) -> bool:
    """Whether ``body``'s data map starts with the origin marker's key: an
    event this version's importer fired, known without decoding its data
    (about 5 µs an event on an importing node, which reads every event it
    imported back from its journal to keep it from going out again)."""
    start = body.find(b"\n\n")
    if start < 0 or len(body) < start + 3:
        return False
    start += 2
    kind = body[start]
    if 0x80 <= kind <= 0x8F:
        start += 1
    elif kind in _MAP_HEADER_SIZE:
        start += _MAP_HEADER_SIZE[kind]
    else:
        return False
    return body.startswith(_ORIGIN_KEY_PACKED, start)


def may_carry_marker(body: bytes) -> bool:
    """Whether ``body`` holds the marker's key, packed as msgpack packs it (a
    fixstr), anywhere: a body without it is no imported event."""
    at = body.find(_KEY_HEADER)
    hits = 0
    while at >= 0:
        if body.startswith(_ORIGIN_KEY_PACKED, at):
            return True
        hits += 1
        if hits == _HEADER_HITS:
            return body.find(_ORIGIN_KEY_PACKED, at + 1) >= 0
        at = body.find(_KEY_HEADER, at + 1)
    return False


def read_marker(data: Mapping[str, Any]) -> tuple[Origin, int] | None:
    """The origin and origin seq of an imported event's data, None for a local event."""
    marker = data.get(ORIGIN_KEY)
    if not isinstance(marker, Mapping):
        return None
    node, epoch, seq = marker.get("node"), marker.get("epoch", 0), marker.get("seq")
    if not isinstance(node, str) or not isinstance(epoch, int) or not isinstance(seq, int):
        return None
    return (node, epoch), seq


@dataclass
class ImportState:
    """Per origin, the last origin seq delivered on this bus."""

    path: Path
    marks: dict[Origin, int] = field(default_factory=dict)
    local_epoch: int | None = None
    as_of: int = 0  # the local seq the marks are true as of
    # Every stream message up to this seq was handled here (fired, skipped or
    # dropped as a duplicate); 0: none yet, this node never imported. Set, not
    # raised: after a rewind or with a stream made anew it may go down.
    stream_seq: int = 0
    _saved: str = ""

    def delivered(self, origin: Origin) -> int | None:
        return self.marks.get(origin)

    def record(self, origin: Origin, seq: int, local_seq: int | None = None) -> None:
        if seq > self.marks.get(origin, -1):
            self.marks[origin] = seq
        if local_seq is not None and local_seq > self.as_of:
            self.as_of = local_seq

    @classmethod
    def load(cls, path: Path) -> ImportState:
        state = cls(path)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            state.local_epoch = saved.get("local_epoch")
            state.as_of = int(saved.get("as_of", 0))
            state.stream_seq = int(saved.get("stream_seq", 0))
            for node, epochs in saved.get("origins", {}).items():
                for epoch, seq in epochs.items():
                    state.marks[(str(node), int(epoch))] = int(seq)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            # The journal scan below rebuilds what matters; say so and go on.
            log.warning(
                "cluster state %s unreadable (%s); rebuilding it from the journal", path, exc
            )
            state = cls(path)
        return state

    def save(self) -> None:
        self._prune()
        origins: dict[str, dict[str, int]] = {}
        for (node, epoch), seq in self.marks.items():
            origins.setdefault(node, {})[str(epoch)] = seq
        text = json.dumps(
            {
                "local_epoch": self.local_epoch,
                "as_of": self.as_of,
                "stream_seq": self.stream_seq,
                "origins": origins,
            }
        )
        if text == self._saved:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self._saved = text

    def _prune(self) -> None:
        by_node: dict[str, list[int]] = {}
        for node, epoch in self.marks:
            by_node.setdefault(node, []).append(epoch)
        for node, epochs in by_node.items():
            # Epochs are random numbers: the marks' order (first seen first) tells their age.
            for epoch in epochs[:-EPOCHS_KEPT]:
                del self.marks[(node, epoch)]

    def catch_up(self, journal_path: Path) -> list[tuple[Origin, int]]:
        """Read the local journal after :attr:`as_of` (all of it when the local
        numbering changed) for imported events, and record them. Blocking: run
        it in a thread. Returns the (origin, origin seq) of each one found."""
        found: list[tuple[Origin, int]] = []
        if not journal_path.exists():
            return found
        try:
            with Journal.open(journal_path, readonly=True) as journal:
                epoch = journal.epoch()
                since = self.as_of if epoch == self.local_epoch else 0
                self.local_epoch = epoch
                for record in journal.iter_read(since=since):
                    self.as_of = max(self.as_of, record.seq)
                    if not may_carry_marker(record.body):
                        continue  # most events: no msgpack work
                    origin = _marker_of(record.body)
                    if origin is not None:
                        self.record(*origin)
                        found.append(origin)
        except JournalError as exc:
            log.warning("cannot read the journal %s for imported events: %s", journal_path, exc)
        return found


def _marker_of(body: bytes) -> tuple[Origin, int] | None:
    try:
        _tag, data = unpack_body(body)
    except RemoteProtocolError:
        return None
    return read_marker(data)
