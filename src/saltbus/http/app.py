"""The ASGI application of the HTTP bridge.

    app = create_app(Config.load(), tokens=TokenStore.open(Path("tokens.json")))
    uvicorn.run(app)                      # or mount it: Mount("/bus", app=app)

Routes: ``GET /`` (the live page) and ``/static/…``, ``GET /openapi.json``,
``GET /whoami``, ``GET /events`` (SSE), ``POST /events`` (fire), ``GET /ws``
(WebSocket), ``POST /hook/<path>``, ``GET /metrics`` (Prometheus, with a
token), ``GET /healthz`` and ``GET /readyz``. The page, its files, the OpenAPI
document and the health checks carry no bus data and are served without a
token; everything else
needs one (or an HMAC signature, for a hook path with a secret).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from saltbus.config import Config
from saltbus.errors import SaltbusError
from saltbus.http.bridge import (
    BodyTooLargeError,
    Bridge,
    error,
    fire_failure_status,
    read_body,
    unauthorized,
)
from saltbus.http.hooks import hook_endpoint
from saltbus.http.openapi import document
from saltbus.http.settings import Settings
from saltbus.http.sse import events_endpoint
from saltbus.http.tokens import TokenStore
from saltbus.http.ws import ws_endpoint

log = logging.getLogger("saltbus.http")

STATIC: Final = Path(__file__).parent / "static"
# The page builds its DOM with textContent only; this forbids anything else
# (inline scripts, other origins) should an event's data ever try.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def create_app(
    config: Config,
    *,
    tokens: TokenStore | None = None,
    hook_prefix: str | None = None,
    hook_secrets: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> Starlette:
    """The bridge to the bus ``config`` names, as a Starlette app.

    ``tokens=None`` turns authentication off: every request may read and fire
    everything (``saltbus http --no-auth`` then binds loopback only).
    ``app.state.bridge`` is the :class:`Bridge`; an app mounted in another one
    that runs no sub-app lifespan starts on its first request, and the host
    should ``await app.state.bridge.close()`` when it stops.
    """
    settings = settings or Settings()
    changes: dict[str, Any] = {}
    if hook_prefix is not None:
        changes["hook_prefix"] = hook_prefix
    if hook_secrets is not None:
        changes["hook_secrets"] = dict(hook_secrets)
    if changes:
        settings = dataclasses.replace(settings, **changes)
    bridge = Bridge(config, tokens, settings)
    if tokens is None:
        log.warning("HTTP bridge without authentication: any client may read and fire events")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document(settings, auth=bridge.auth))

    async def whoami(request: Request) -> Response:
        grant = bridge.grant(request)
        if grant is None:
            return unauthorized()
        return JSONResponse(grant.describe() | {"auth": bridge.auth})

    async def events(request: Request) -> Response:
        return await events_endpoint(bridge, request)

    async def fire(request: Request) -> Response:
        return await fire_endpoint(bridge, request)

    async def hook(request: Request) -> Response:
        return await hook_endpoint(bridge, request)

    async def ws(websocket: WebSocket) -> None:
        await ws_endpoint(bridge, websocket)

    async def metrics(request: Request) -> Response:
        if bridge.grant(request) is None:
            return unauthorized()
        return await metrics_endpoint(bridge)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        return await readyz_endpoint(bridge)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        bridge.ensure_started()
        try:
            yield
        finally:
            await bridge.close()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/whoami", whoami, methods=["GET"]),
            Route("/events", events, methods=["GET"]),
            Route("/events", fire, methods=["POST"]),
            WebSocketRoute("/ws", ws),
            Route("/hook", hook, methods=["POST"]),
            Route("/hook/{path:path}", hook, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.bridge = bridge
    return app


async def fire_endpoint(bridge: Bridge, request: Request) -> Response:
    """``POST /events`` with ``{"tag", "data"}``: ``{"success", "tag", "seq"}``
    (``seq`` null when the publisher is Salt's, which acknowledges nothing)."""
    grant = bridge.grant(request)
    if grant is None:
        return unauthorized()
    try:
        body = await read_body(request, bridge.config.max_event_size)
        message = json.loads(body)
    except BodyTooLargeError as exc:
        return error(413, str(exc))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"body is not JSON: {exc}")
    if not isinstance(message, dict):
        return error(400, 'send an object: {"tag": ..., "data": {...}}')
    tag, data = message.get("tag"), message.get("data", {})
    if not isinstance(tag, str) or not tag:
        return error(400, "tag must be a non-empty string")
    if not isinstance(data, dict):
        return error(400, "data must be an object")
    if not grant.may_fire(tag):
        return error(403, f"token {grant.name!r} may not fire {tag!r}")
    bridge.ensure_started()
    try:
        event = await bridge.hub.fire(tag, data)
    except SaltbusError as exc:
        return error(fire_failure_status(exc), str(exc))
    return JSONResponse({"success": True, "tag": tag, "seq": event.seq})


async def metrics_endpoint(bridge: Bridge) -> Response:
    """The bridge's gauges and, on a saltbus bus, the publisher's metrics."""
    try:
        from saltbus.metrics.bridge import bridge_metrics  # noqa: PLC0415
    except ImportError:
        return error(404, "metrics need prometheus_client: pip install 'saltbus[metrics]'")
    from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

    body = await bridge_metrics(
        bridge.config, clients=bridge.hub.members, connected=bridge.hub.connected.is_set()
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def readyz_endpoint(bridge: Bridge) -> Response:
    """200 when connected to the bus and the publisher is ready; 503 naming
    the failed checks otherwise."""
    from saltbus.metrics.bridge import bridge_readiness  # noqa: PLC0415

    readiness = await bridge_readiness(bridge.config, connected=bridge.hub.connected.is_set())
    return JSONResponse(readiness.as_dict(), status_code=200 if readiness.ready else 503)
