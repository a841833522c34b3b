"""``GET /events``: the bus as Server-Sent Events.

Three forms (``?format=``):

- ``saltbus`` (default): ``id: <seq>``, ``event: <tag>``, ``data: {"tag", "data"}``.
  EventSource hands these to ``addEventListener(<tag>)`` (not ``onmessage``).
- ``message``: the same without the ``event:`` line, so that a browser's
  ``EventSource.onmessage`` sees every event (the tag is in the data).
- ``salt``: salt-api's stream, for its existing clients: ``retry: 400`` first,
  then ``tag: <tag>`` and ``data: <json>`` per event, no ids.

``?backlog=N`` opens the stream with the last ``N`` events it would send, from
the journal, then goes on live; a resume point (``Last-Event-ID``, as
EventSource sends when it reconnects to the same URL) wins over it.

An idle stream gets a comment every ``heartbeat`` seconds, so proxies keep it
open; that is also when a revoked token's stream is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from saltbus.errors import ConfigError
from saltbus.event import Event, MatchType
from saltbus.http.backlog import parse_backlog
from saltbus.http.bridge import Bridge, dumps, error, parse_seq, unauthorized
from saltbus.http.tasks import stop

log = logging.getLogger("saltbus.http")

FORMATS: Final = ("saltbus", "message", "salt")
HEARTBEAT: Final = b": keepalive\n\n"
SALT_PREAMBLE: Final = "retry: 400\n"


def _field(text: str) -> str:
    # A line break inside a field would end it: the rest would be read as
    # another field, or even end the event.
    return text.replace("\r", " ").replace("\n", " ")


def format_event(event: Event, form: str = "saltbus", payload: str | None = None) -> str:
    """One event as an SSE message in the given form (``payload``: its JSON
    ``{"tag", "data"}``, when already encoded)."""
    if payload is None:
        payload = dumps({"tag": event.tag, "data": event.data})
    if form == "salt":
        return f"tag: {_field(event.tag)}\ndata: {payload}\n\n"
    lines = []
    if event.seq is not None:
        lines.append(f"id: {event.seq}\n")
    if form == "saltbus":
        lines.append(f"event: {_field(event.tag)}\n")
    lines.append(f"data: {payload}\n\n")
    return "".join(lines)


class EventSourceResponse(Response):
    """A streaming response that ends (and closes its stream) as soon as the
    client goes away, even when the stream has nothing to send (Starlette's
    StreamingResponse notices only on its next write under ASGI 2.4 servers),
    and ends cleanly when ``stopping`` is set (the server shuts down)."""

    media_type = "text/event-stream"

    def __init__(self, chunks: Callable[[], AsyncIterator[bytes]], stopping: asyncio.Event) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        self._chunks = chunks
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        writer = asyncio.create_task(self._write(send))
        reader = asyncio.create_task(_until_disconnect(receive))
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait((writer, reader, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await stop(writer, reader, stopper)
        if writer.done() and not writer.cancelled():
            exc = writer.exception()
            if isinstance(exc, OSError):
                return  # a write to a client that went away is its end, not an error
            if exc is not None:
                raise exc
        if not reader.done() or reader.cancelled():
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send) -> None:
        async for chunk in self._chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def events_endpoint(bridge: Bridge, request: Request) -> Response:
    grant = bridge.grant(request, query_token=True)
    if grant is None:
        return unauthorized()
    params = request.query_params
    form = params.get("format", "saltbus")
    if form not in FORMATS:
        return error(400, f"format must be one of {', '.join(FORMATS)}")
    try:
        match_type = MatchType.parse(params.get("match_type"), bridge.config.event_match_type)
        tag = params.get("tag", "")
        since = await bridge.start_point(
            grant,
            resume=parse_seq(request.headers.get("last-event-id"), params.get("last_event_id")),
            backlog=parse_backlog(params.get("backlog")),
            tag=tag,
            match_type=match_type,
        )
        bridge.ensure_started()
        stream = bridge.stream(grant, tag=tag, match_type=match_type, since=since)
    except ConfigError as exc:
        return error(400, str(exc))

    watch = bridge.watch(request, grant)

    async def chunks() -> AsyncIterator[bytes]:
        if form == "salt":
            yield SALT_PREAMBLE.encode()
        else:
            yield HEARTBEAT  # headers and a first byte now: the client knows it is connected
        async for batch in stream:
            if not watch.valid():
                log.info("token %r no longer valid: ending its stream", grant.name)
                return
            if not batch:
                yield HEARTBEAT
                continue
            payload = bridge.payloads.payload
            text = "".join(format_event(event, form, payload(event)) for event in batch)
            yield text.encode("utf-8")

    return EventSourceResponse(chunks, bridge.stopping)
