"""The OpenAPI 3 document of the bridge, written by hand (the routes are few,
and a test checks that the two agree)."""

from __future__ import annotations

from typing import Any, Final

from saltbus.http.backlog import MAX_BACKLOG
from saltbus.http.settings import Settings

VERSION: Final = "3.1.0"

_JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {_JSON: {"schema": schema}}
    return answer


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_FILTERS: Final = [
    _query("tag", "only events whose tag matches (default: every event)"),
    _query(
        "match_type",
        "how `tag` is compared (default: the bus's event_match_type, startswith)",
        {"type": "string", "enum": ["startswith", "endswith", "find", "regex", "fnmatch"]},
    ),
    _query(
        "last_event_id",
        "resume after this sequence number (as the Last-Event-ID header does)",
        {"type": "integer", "minimum": 0},
    ),
    _query(
        "backlog",
        "open with the last N events the stream would send, from the journal, then go on "
        "live with no gap (ignored when resuming)",
        {"type": "integer", "minimum": 0, "maximum": MAX_BACKLOG},
    ),
    _query("token", "the bearer token, for clients that cannot send headers (EventSource)"),
]

_UNAUTHORIZED = _response("no valid token", _ERROR)
_FORBIDDEN = _response("the token may not fire this tag", _ERROR)
_FIRE_FAILURES: Final = {
    "502": _response("the publisher failed the fire", _ERROR),
    "503": _response("no publisher, or its journal cannot take the event", _ERROR),
    "504": _response("the publisher did not acknowledge in time", _ERROR),
}


def document(settings: Settings, *, auth: bool = True) -> dict[str, Any]:
    """The document of a bridge with these settings."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}] if auth else []
    prefix = settings.hook_prefix.strip("/")
    return {
        "openapi": VERSION,
        "info": {
            "title": "saltbus HTTP bridge",
            "version": "1",
            "description": (
                "A SaltStack-compatible event bus over HTTP: Server-Sent Events and a "
                "WebSocket with server-side filters and resume, firing, and webhooks."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Event": {
                    "type": "object",
                    "required": ["tag", "data"],
                    "properties": {
                        "tag": {"type": "string", "minLength": 1},
                        "data": {"type": "object"},
                    },
                },
                "Fired": {
                    "type": "object",
                    "properties": {
                        "success": {"type": "boolean"},
                        "tag": {"type": "string"},
                        "seq": {
                            "type": ["integer", "null"],
                            "description": "the event's sequence number (null from a Salt "
                            "publisher, which numbers nothing)",
                        },
                    },
                },
            },
        },
        "security": secured,
        "paths": {
            "/": {
                "get": {
                    "summary": "the live page (HTML; token from the URL fragment #token=…)",
                    "security": [],
                    "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "security": [],
                    "responses": {"200": _response("the OpenAPI document", {"type": "object"})},
                }
            },
            "/whoami": {
                "get": {
                    "summary": "the token's name and the tag patterns it may read and fire",
                    "responses": {
                        "200": _response("the grant", {"type": "object"}),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/events": {
                "get": {
                    "summary": "events as Server-Sent Events",
                    "description": (
                        "format=saltbus (default): `id: <seq>`, `event: <tag>`, "
                        '`data: {"tag","data"}`; format=message: the same without `event:` '
                        "(for EventSource.onmessage); format=salt: salt-api's stream "
                        "(`retry: 400`, then `tag:` and `data:` lines). Comments every "
                        "heartbeat. The Last-Event-ID header (or last_event_id) resumes "
                        "from the journal with no gap."
                    ),
                    "parameters": [
                        *_FILTERS,
                        _query(
                            "format",
                            "the message form",
                            {"type": "string", "enum": ["saltbus", "message", "salt"]},
                        ),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _response("a bad filter or format", _ERROR),
                        "401": _UNAUTHORIZED,
                    },
                },
                "post": {
                    "summary": "fire an event",
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Event"}}},
                    },
                    "responses": {
                        "200": _response("fired", {"$ref": "#/components/schemas/Fired"}),
                        "400": _response("not a valid event", _ERROR),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "413": _response("over max_event_size", _ERROR),
                        **_FIRE_FAILURES,
                    },
                },
            },
            "/ws": {
                "get": {
                    "summary": "events over a WebSocket, and firing",
                    "description": (
                        'Server to client: {"tag","data","seq"} per event. Client to server: '
                        '{"tag","data","id"} fires; answered {"fired":{"tag","seq"},"id"} or '
                        '{"error","id"}.'
                    ),
                    "parameters": _FILTERS,
                    "responses": {
                        "101": {"description": "switching to the WebSocket protocol"},
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/hook": _hook(prefix, with_path=False),
            "/hook/{path}": _hook(prefix, with_path=True),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: the bridge's, and the publisher's on a "
                    "saltbus bus (needs the metrics extra)",
                    "responses": {
                        "200": {"description": "metrics", "content": {"text/plain": {}}},
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 while the bridge serves",
                    "security": [],
                    "responses": {"200": _response("alive", {"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "200 when connected to the bus and its publisher is ready "
                    "(journal, returners, federation); 503 naming the failed checks",
                    "security": [],
                    "responses": {
                        "200": _response("ready", {"type": "object"}),
                        "503": _response("not ready", {"type": "object"}),
                    },
                }
            },
        },
    }


def _hook(prefix: str, *, with_path: bool) -> dict[str, Any]:
    tag = f"{prefix}/<path>" if with_path else prefix
    operation: dict[str, Any] = {
        "summary": f"a webhook: fires {tag} with {{body, post, headers}} (as salt-api)",
        "description": (
            "A path with a secret needs a GitHub-style X-Hub-Signature-256 "
            "(sha256=<hex HMAC of the body>) and no token; any other path a token "
            "(header or ?token=) that may fire the tag."
        ),
        "parameters": [
            _query("token", "the bearer token, for senders that only take a URL"),
            {
                "name": "X-Hub-Signature-256",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
            },
        ],
        "requestBody": {
            "required": False,
            "content": {
                _JSON: {"schema": {}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                "*/*": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "200": _response("fired", {"$ref": "#/components/schemas/Fired"}),
            "401": _response("no valid token or signature", _ERROR),
            "403": _FORBIDDEN,
            "413": _response("over max_event_size", _ERROR),
            **_FIRE_FAILURES,
        },
    }
    if with_path:
        operation["parameters"].append(
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    return {"post": operation}
