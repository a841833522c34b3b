"""The import consumer's deliveries, read as they arrive.

nats-py's ``PullSubscription.fetch`` takes each message of a batch with
``next_msg``, which makes a task, a ``wait_for`` and a uuid per message, and
every node reads every message of the stream (its own exports too): fetching
and acknowledging took about 38 us of CPU per message, this about 14.
Here one pull request of up to a batch is kept outstanding and its messages
go, in the order NATS delivers them, into a buffer from the subscription's
callback; :meth:`Puller.fetch` hands over what is buffered as soon as
anything is, so a busy stream gives large batches and a quiet one gives each
event at once.

Order is the importer's business (importer.py): everything lands in one
inbox in delivery order, and what arrives for a request after a fetch gave
up waiting is handed over by the next fetch, never dropped, so the consumer
sequence numbers the importer checks for gaps stay as NATS sent them.

A status reply that says the consumer is gone (nats-server 2.9: ``409
Consumer Deleted`` to the outstanding request, ``409 Consumer is push
based``, ``400 Bad Request``; then ``503`` no responders to any new request,
there being no consumer to answer it) ends the puller: once what was
delivered before it is handed over, :meth:`Puller.fetch` raises
:class:`ConsumerLostError` and the importer binds again (link.py makes a
missing consumer again after the last stream seq it handled). nats-py's own
fetch takes any 409 for a timeout and retries, which never ends here.
The request's own ends (``408``; ``404`` No Messages; ``409 Exceeded ...``,
a limit on waiting requests; ``409 Leadership Change``, which a consumer
made again by a rewind gets as its leader settles after NATS restarts: taken
for a loss, it unlinked the node for a retry's wait each time) and
heartbeats (``100``) are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from saltbus.errors import SaltbusError

API_PREFIX: Final = "$JS.API"
# A JetStream delivery's reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.
# <stream seq>.<consumer seq>.<time>.<pending>; servers with domains add
# <domain>.<account hash> after ACK and a token at the end.
_ACK_TOKENS_V1: Final = 9
_CONSUMER_SEQ_V1: Final = 6
_CONSUMER_SEQ_V2: Final = 8
_STREAM_SEQ_V1: Final = 5
_STREAM_SEQ_V2: Final = 7
STATUS: Final = "Status"
DESCRIPTION: Final = "Description"
# Status replies that end one request, not the consumer.
REQUEST_ENDED: Final = frozenset(("408", "404"))
HEARTBEAT: Final = "100"
CONFLICT: Final = "409"
# A 409 whose request ended because the consumer's leader changed (not a lost consumer).
LEADERSHIP_CHANGE: Final = "Leadership Change"
# Messages the inbox may hold: more than one request ever delivers.
PENDING_LIMIT: Final = 1 << 20


class ConsumerLostError(SaltbusError):
    """NATS said the consumer is gone (deleted, replaced, not answering)."""


class Puller:
    """A durable pull consumer's deliveries (bound by :func:`Link.bind_consumer`)."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        # Messages the outstanding request may still deliver (0: none outstanding).
        self._owed = 0
        self._ends_at = 0.0
        self._lost: str | None = None  # why the consumer is gone

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            self._inbox, cb=self._on_message, pending_msgs_limit=PENDING_LIMIT
        )

    async def _on_message(self, message: Msg) -> None:
        headers = message.headers
        if not message.data and headers is not None and STATUS in headers:
            status = headers[STATUS]
            description = headers.get(DESCRIPTION, "")
            if status == HEARTBEAT:
                return
            if status in REQUEST_ENDED or (
                status == CONFLICT and description.startswith(LEADERSHIP_CHANGE)
            ):
                # Expired, or the consumer's leader moved (the consumer lives
                # on: what the old leader delivered and never arrived is a
                # gap the importer rewinds over): made again at once.
                self._owed = 0
                self._arrived.set()
            elif status == CONFLICT and description.startswith("Exceeded"):
                # Over a limit on waiting requests: not asked again before
                # this one's time is up, no busy loop.
                pass
            else:
                self._lost = f"{status} {description}".strip()
                self._arrived.set()
            return
        self._owed -= 1
        self._buffer.append(message)
        self._arrived.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages, as soon as there is one; raises
        :class:`TimeoutError` when none came within ``timeout`` seconds, and
        :class:`ConsumerLostError` when the consumer is gone and nothing
        delivered before is left."""
        deadline = time.monotonic() + timeout
        # Asked before what is buffered is handed over: NATS sends the next
        # messages while the importer handles these.
        await self._ask(batch, timeout)
        while not self._buffer:
            if self._lost is not None:
                raise ConsumerLostError(f"the consumer is gone (NATS said {self._lost})")
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no message in {timeout} s")
            self._arrived.clear()
            await self._ask(batch, timeout)
            # A request's end is known by the time it was given, not by its
            # 408, which nats-server does not always send.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline, self._ends_at) - now):
                    await self._arrived.wait()
        taken, self._buffer = self._buffer[:batch], self._buffer[batch:]
        return taken

    async def _ask(self, batch: int, expires: float) -> None:
        """A new pull request, unless one is outstanding."""
        if self._owed > 0 and time.monotonic() < self._ends_at:
            return
        self._owed = batch
        self._ends_at = time.monotonic() + expires
        request = {"batch": batch, "expires": int(expires * 1e9)}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)

    async def unsubscribe(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None


def delivery_number(message: Msg) -> int:
    """The consumer sequence number of a delivery, from its reply subject:
    what ``message.metadata.sequence.consumer`` says, without building the
    rest of the metadata (a datetime among it) for every message."""
    number = _reply_token(message, _CONSUMER_SEQ_V1, _CONSUMER_SEQ_V2)
    if number is None:
        return message.metadata.sequence.consumer  # raises NotJSMessageError for a stranger
    return number


def stream_number(message: Msg) -> int:
    """The stream sequence number of a delivery, from its reply subject."""
    number = _reply_token(message, _STREAM_SEQ_V1, _STREAM_SEQ_V2)
    if number is None:
        return message.metadata.sequence.stream  # raises NotJSMessageError for a stranger
    return number


def _reply_token(message: Msg, v1: int, v2: int) -> int | None:
    tokens = (message.reply or "").split(".")
    index = v1 if len(tokens) == _ACK_TOKENS_V1 else v2
    if len(tokens) > index and tokens[0] == "$JS" and tokens[1] == "ACK":
        try:
            return int(tokens[index])
        except ValueError:
            pass
    return None
