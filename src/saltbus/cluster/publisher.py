"""JetStream publishes whose acknowledgements come back through one subscription.

nats-py's ``publish_async`` gives each publish a semaphore wait (through
``asyncio.wait_for``), a fresh NUID and random token, and a dictionary
entry; the export publishes every local event, so on the exporting node
that overhead outweighed the publish itself. Here a publish is numbered
under one reply prefix of the connection; the JetStream acknowledgement
(or error) arriving on ``<prefix>.<number>`` resolves the publish's future
with what nats-py's would hold: a :class:`~nats.js.api.PubAck`, or
:class:`~nats.js.errors.APIError` / :class:`~nats.js.errors.NoStreamResponseError`.
How many are in flight is the exporter's bound (one batch at a time).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

NO_RESPONDERS: Final = "503"
STATUS: Final = "Status"


class Publisher:
    """Publishes on ``nc`` and matches JetStream's answers to them."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        self._numbered = 0
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Send one message; the future resolves when JetStream answers (a
        cancelled future is forgotten). Raises what ``Client.publish`` raises
        (:class:`nats.errors.MaxPayloadError`, a closed connection)."""
        self._numbered += 1
        token = str(self._numbered)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        return future

    async def _on_reply(self, message: Msg) -> None:
        future = self._waiting.pop(message.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return  # answered after its publish was given up
        headers = message.headers
        if headers is not None and headers.get(STATUS) == NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = json.loads(message.data)
        except ValueError as exc:
            future.set_exception(nats.js.errors.Error(f"unreadable acknowledgement: {exc}"))
            return
        if "error" in answer:
            future.set_exception(_api_error(answer["error"]))
        else:
            # What the export reads of it, without from_response's walk over
            # the dataclass's fields for every publish.
            future.set_result(
                PubAck(
                    stream=answer.get("stream", ""),
                    seq=answer.get("seq", 0),
                    domain=answer.get("domain"),
                    duplicate=answer.get("duplicate"),
                )
            )

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()
        for future in list(self._waiting.values()):
            future.cancel()
        self._waiting.clear()


def _api_error(error: dict[str, Any]) -> nats.js.errors.APIError:
    # nats-py raises the known kinds (BadRequestError, ...) and returns the rest.
    try:
        return nats.js.errors.APIError.from_error(error)  # type: ignore[no-any-return]
    except nats.js.errors.APIError as known:
        return known
