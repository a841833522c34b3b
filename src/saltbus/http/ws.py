"""``GET /ws``: the bus over a WebSocket, both ways.

Server to client: one text message per event, ``{"tag", "data", "seq"}``
(``seq`` null from a Salt publisher). The same filters, resume point and
backlog as ``/events``: ``?tag=``, ``?match_type=``, ``?last_event_id=``,
``?backlog=``.

Client to server: ``{"tag": ..., "data": {...}, "id": <anything>}`` fires an
event if the token may fire that tag; the answer is ``{"fired": {"tag",
"seq"}, "id"}`` or ``{"error": ..., "id"}`` (``id`` echoed when given), sent
between the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from saltbus.errors import ConfigError, SaltbusError
from saltbus.event import Event, MatchType
from saltbus.http.backlog import parse_backlog
from saltbus.http.bridge import Bridge, dumps, error, parse_seq, unauthorized
from saltbus.http.stream import EventStream
from saltbus.http.tasks import stop
from saltbus.http.tokens import Grant

log = logging.getLogger("saltbus.http")

NORMAL = 1000
GOING_AWAY = 1001  # the server stops: reconnect (with last_event_id) later
POLICY_VIOLATION = 1008


async def ws_endpoint(bridge: Bridge, websocket: WebSocket) -> None:
    grant = bridge.grant(websocket, query_token=True)
    if grant is None:
        await _deny(websocket, unauthorized())
        return
    params = websocket.query_params
    try:
        match_type = MatchType.parse(params.get("match_type"), bridge.config.event_match_type)
        tag = params.get("tag", "")
        since = await bridge.start_point(
            grant,
            resume=parse_seq(params.get("last_event_id")),
            backlog=parse_backlog(params.get("backlog")),
            tag=tag,
            match_type=match_type,
        )
        bridge.ensure_started()
        stream = bridge.stream(grant, tag=tag, match_type=match_type, since=since)
    except ConfigError as exc:
        await _deny(websocket, error(400, str(exc)))
        return
    await websocket.accept()
    session = _Session(bridge, websocket, grant)
    pump = asyncio.create_task(session.pump(stream))
    listen = asyncio.create_task(session.listen())
    stopper = asyncio.create_task(bridge.stopping.wait())
    try:
        await asyncio.wait((pump, listen, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop(pump, listen, stopper)
        code = GOING_AWAY if stopper.done() and not stopper.cancelled() else NORMAL
        await _close(websocket, code)
    if session.client_close is not None:
        log.debug("token %r closed its WebSocket (code %d)", grant.name, session.client_close)


async def _close(websocket: WebSocket, code: int) -> None:
    """Close our side, unless a side already did: after the client's close (the
    usual end) a close frame cannot be sent, and trying would raise out of the
    app, which the server logs as an error with a traceback."""
    connected = WebSocketState.CONNECTED
    if websocket.client_state is not connected or websocket.application_state is not connected:
        return
    # The client may go away between the check and the send.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code)


async def _deny(websocket: WebSocket, response: Response) -> None:
    """Refuse the handshake with an HTTP answer where the server can send one
    (uvicorn can), else with a policy-violation close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(POLICY_VIOLATION)


def message(event: Event, payload: str) -> str:
    """``{"tag", "data", "seq"}``, from the cached ``{"tag", "data"}``."""
    seq = "null" if event.seq is None else str(event.seq)
    return f'{payload[:-1]},"seq":{seq}}}'


class _Session:
    def __init__(self, bridge: Bridge, websocket: WebSocket, grant: Grant) -> None:
        self.bridge = bridge
        self.websocket = websocket
        self.grant = grant
        self.watch = bridge.watch(websocket, grant)
        self.client_close: int | None = None  # the client's close code, once it closed
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(dumps(message))

    async def pump(self, stream: EventStream) -> None:
        async for batch in stream:
            if not self.watch.valid():
                log.info("token %r no longer valid: closing its WebSocket", self.grant.name)
                await self.websocket.close(POLICY_VIOLATION, "token revoked")
                return
            if not batch:
                continue
            async with self._send_lock:
                for event in batch:
                    await self.websocket.send_text(
                        message(event, self.bridge.payloads.payload(event))
                    )

    async def listen(self) -> None:
        """Answer what the client sends, until it closes (its close ends the session)."""
        while True:
            received = await self.websocket.receive()
            if received["type"] == "websocket.disconnect":
                self.client_close = int(received.get("code", NORMAL))
                return
            text = received.get("text")
            if text is None:  # a binary message: read as the UTF-8 of the same JSON
                text = (received.get("bytes") or b"").decode("utf-8", "replace")
            await self.send(await self._fire(text))

    async def _fire(self, text: str) -> dict[str, Any]:
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            return {"error": f"not JSON: {exc}"}
        if not isinstance(request, dict):
            return {"error": 'send an object: {"tag": ..., "data": {...}}'}
        answer: dict[str, Any] = {"id": request["id"]} if "id" in request else {}
        tag, data = request.get("tag"), request.get("data", {})
        if not isinstance(tag, str) or not tag:
            return answer | {"error": "tag must be a non-empty string"}
        if not isinstance(data, dict):
            return answer | {"error": "data must be an object"}
        if not self.watch.valid():
            return answer | {"error": "the token is no longer valid"}
        if not self.grant.may_fire(tag):
            return answer | {"error": f"token {self.grant.name!r} may not fire {tag!r}"}
        try:
            event = await self.bridge.hub.fire(tag, data)
        except (SaltbusError, ValueError, TypeError) as exc:
            return answer | {"error": f"not fired: {exc}"}
        return answer | {"fired": {"tag": tag, "seq": event.seq}}
