"""What travels with each event through NATS, besides its body.

Two forms. A message carries one event (the first form, and the only one
before batches; ``cluster.export_batch: 1`` keeps to it), or a run of an
origin's events (:class:`Batch`, below). Importers read both.

One event: the message body is the event's body as the bus carries and journals it
(``TAG + b"\\n\\n" + msgpack(DATA)``), so a consumer of the stream needs
nothing of saltbus to read it. The headers say where it comes from:

- ``Nats-Msg-Id: <node>:<epoch>:<seq>``: JetStream drops a message whose id
  it saw within the stream's duplicate window, so a resend never duplicates;
- ``Saltbus-Origin``, ``Saltbus-Origin-Epoch``, ``Saltbus-Origin-Seq``: the
  origin node, its numbering and the event's sequence number there;
- ``Saltbus-Tag``: the tag, percent-encoded (header values are one line of
  text), for readers that only look at headers.

A batch (an exporting node with a backlog; an idle one sends each event
alone, in the first form): headers ``Saltbus-Origin``,
``Saltbus-Origin-Epoch``, ``Saltbus-Origin-Seq`` (the first event's seq),
``Saltbus-Batch: N`` (the number of events) and ``Nats-Msg-Id:
<node>:<epoch>:<first seq>-<last seq>``; no tag header. The body is the N
events one after the other, each as::

    seq offset (4 bytes, big-endian: the event's seq minus the first's)
    body length (4 bytes, big-endian)
    body (as in the first form)

The seqs increase, not always by one (events not exported leave gaps). The
events of a batch share their subject but for its last token, and the batch
is published on that shared part followed by the token ``%+`` (subjects.py):
any filter subject that selects one of its events then selects the batch
(see exporter.py). A resend may cut a backlog into batches differently, so
the ``Nats-Msg-Id`` does not always find it; importers drop every event at
or below the highest origin seq they delivered (importer.py).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from saltbus.errors import RemoteProtocolError

MSG_ID: Final = "Nats-Msg-Id"
ORIGIN: Final = "Saltbus-Origin"
ORIGIN_EPOCH: Final = "Saltbus-Origin-Epoch"
ORIGIN_SEQ: Final = "Saltbus-Origin-Seq"
TAG: Final = "Saltbus-Tag"
BATCH: Final = "Saltbus-Batch"
_ENTRY: Final = struct.Struct(">II")
ENTRY_OVERHEAD: Final = _ENTRY.size
_MAX_OFFSET: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Envelope:
    node: str
    epoch: int
    seq: int
    tag: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            MSG_ID: f"{self.node}:{self.epoch}:{self.seq}",
            ORIGIN: self.node,
            ORIGIN_EPOCH: str(self.epoch),
            ORIGIN_SEQ: str(self.seq),
        }
        if self.tag is not None:
            headers[TAG] = quote(self.tag, safe="/")
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Envelope:
        """Raises :class:`RemoteProtocolError` for a message saltbus did not publish."""
        if not headers or ORIGIN not in headers:
            raise RemoteProtocolError("message without a Saltbus-Origin header")
        try:
            epoch = int(headers.get(ORIGIN_EPOCH, "0"))
            seq = int(headers[ORIGIN_SEQ])
        except (KeyError, ValueError):
            raise RemoteProtocolError(
                f"message from {headers[ORIGIN]!r} without a valid origin sequence number"
            ) from None
        tag = headers.get(TAG)
        return cls(headers[ORIGIN], epoch, seq, None if tag is None else unquote(tag))


@dataclass(frozen=True, slots=True)
class Batch:
    """Several events of one origin in one message (the second form)."""

    node: str
    epoch: int
    events: Sequence[tuple[int, bytes]]  # (origin seq, body), seqs increasing

    def headers(self) -> dict[str, str]:
        first, last = self.events[0][0], self.events[-1][0]
        return {
            MSG_ID: f"{self.node}:{self.epoch}:{first}-{last}",
            ORIGIN: self.node,
            ORIGIN_EPOCH: str(self.epoch),
            ORIGIN_SEQ: str(first),
            BATCH: str(len(self.events)),
        }

    def body(self) -> bytes:
        first = self.events[0][0]
        parts: list[bytes] = []
        for seq, body in self.events:
            if not 0 <= seq - first <= _MAX_OFFSET:
                raise ValueError(f"seq {seq} cannot follow {first} in one batch")
            parts.append(_ENTRY.pack(seq - first, len(body)))
            parts.append(body)
        return b"".join(parts)


def batch_size(headers: Mapping[str, str] | None) -> int | None:
    """The number of events a message says it carries; None: one, in the first form."""
    if not headers or BATCH not in headers:
        return None
    try:
        count = int(headers[BATCH])
    except ValueError:
        count = 0
    if count < 1:
        raise RemoteProtocolError(f"message with an invalid {BATCH} header {headers[BATCH]!r}")
    return count


def unpack_batch(envelope: Envelope, count: int, payload: bytes) -> list[tuple[int, bytes]]:
    """The (origin seq, body) of each event of a batch whose headers gave
    ``envelope`` (the first seq) and ``count``. Raises :class:`RemoteProtocolError`
    when the body does not hold exactly that."""
    events: list[tuple[int, bytes]] = []
    view = memoryview(payload)
    at, previous = 0, -1
    while at < len(view):
        if at + ENTRY_OVERHEAD > len(view):
            raise RemoteProtocolError(f"batch from {envelope.node!r} cut inside an entry")
        offset, length = _ENTRY.unpack_from(view, at)
        at += ENTRY_OVERHEAD
        if at + length > len(view):
            raise RemoteProtocolError(f"batch from {envelope.node!r} cut inside an event")
        if offset <= previous:
            raise RemoteProtocolError(f"batch from {envelope.node!r} with seqs out of order")
        previous = offset
        events.append((envelope.seq + offset, bytes(view[at : at + length])))
        at += length
    if len(events) != count:
        raise RemoteProtocolError(
            f"batch from {envelope.node!r} holds {len(events)} events, its header says {count}"
        )
    return events
