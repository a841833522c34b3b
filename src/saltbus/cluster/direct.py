"""Imported events handed straight to the daemon's intake (the bridge inside ``saltbus serve``).

Through a client, a fetched batch costs a frame per event through the
client's and the server's framing, an acknowledged fire for the last one,
and a read of the journal to learn whether the others landed. When the
bridge runs in the daemon's own event loop, a batch goes to the
:class:`~saltbus.server.intake.Intake` in one call instead, with an
acknowledgement asked for every event: the intake answers each with its
local seq once journaled, or refuses it (its journal cannot commit), so the
importer knows exactly what landed without reading the journal back.
The answer comes once the batch is in the journal's tail, not once SQLite
indexes it (``acks_at_commit``): the events are then delivered as a local
client's unacked fires are, and the importer acknowledges them to NATS and
fetches the next ones while SQLite indexes these behind. A crash before the
index has them loses nothing: the next start indexes the tail first, and
the importer learns what it imported from the journal only after that.

The intake numbers, journals and delivers the batch as it does a
connection's: in order, after what was accepted before it, redacted if the
config says so; the events are stamped as a client stamps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saltbus.client.firing import UtcStamper
from saltbus.config import Config
from saltbus.server.intake import Intake
from saltbus.wire import data_packer, pack_body


@dataclass(frozen=True, slots=True)
class Landed:
    """What the intake said of a batch: per event its local seq (None if
    refused), and why it refused any."""

    seqs: list[int | None]
    refused: str | None


class _Answers:
    """The acknowledgement target a batch is accepted with.

    Every event asks for an answer, so the intake holds none of them while
    its journal fails (it refuses them at once) and never has a reason to
    pause this source: the pause calls have nothing to stop."""

    def __init__(self, count: int) -> None:
        self.seqs: list[int | None] = [None] * count
        self.refused: str | None = None
        self.done = asyncio.Event()
        self._unanswered = count

    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None:
        for request_id, seq in acks:
            self.seqs[request_id] = seq
        self._answered(len(acks))

    def send_nacks(self, request_ids: Sequence[int], reason: str) -> None:
        self.refused = reason
        self._answered(len(request_ids))

    def _answered(self, count: int) -> None:
        self._unanswered -= count
        if self._unanswered <= 0:
            self.done.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class DirectFire:
    """Fires batches into ``intake``, which runs in this event loop."""

    def __init__(self, config: Config, intake: Intake) -> None:
        self.intake = intake
        self._stamp = UtcStamper(config.generation.stamp_has_offset)
        self._packer = data_packer()

    async def fire(self, events: Sequence[tuple[str, dict[str, Any]]]) -> Landed:
        """Journal and deliver ``events`` (tag, data; data gets its ``_stamp``) in order."""
        if not events:
            return Landed([], None)
        tags: list[str] = []
        bodies: list[bytes] = []
        for tag, data in events:
            data["_stamp"] = self._stamp()
            tags.append(tag)
            bodies.append(pack_body(tag, data, self._packer))
        answers = _Answers(len(bodies))
        # The request id of each event is its index in the batch.
        self.intake.accept(
            bodies,
            tags,
            [(index, index) for index in range(len(bodies))],
            answers,
            acks_at_commit=True,
        )
        await answers.done.wait()
        return Landed(answers.seqs, answers.refused)
