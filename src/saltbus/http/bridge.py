"""What every endpoint of one HTTP bridge shares: the bus connection, the
tokens, the settings, and how a request proves who it is."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Final

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from saltbus.config import Config
from saltbus.errors import (
    BusTimeoutError,
    FrameTooLargeError,
    JournalUnavailableError,
    LocalProtocolError,
    NoPublisherError,
    SaltbusError,
)
from saltbus.event import Event, MatchType
from saltbus.http.backlog import backlog_start, journal_file
from saltbus.http.hub import Hub
from saltbus.http.settings import Settings
from saltbus.http.stream import EventStream
from saltbus.http.tokens import Grant, TokenStore

log = logging.getLogger("saltbus.http")

PAYLOAD_CACHE: Final = 4096


class Bridge:
    """One bridge: the app's routes are its methods' users."""

    def __init__(self, config: Config, tokens: TokenStore | None, settings: Settings) -> None:
        self.config = config
        self.tokens = tokens
        self.settings = settings
        self.hub = Hub(
            config, max_pending=settings.fanout_pending, fire_timeout=settings.fire_timeout
        )
        # Set when the server stops: open streams end cleanly instead of being
        # cancelled (clients reconnect, and resume, when it is back).
        self.stopping = asyncio.Event()
        self.payloads = PayloadCache()
        self._warned_no_journal = False

    @property
    def auth(self) -> bool:
        return self.tokens is not None

    def ensure_started(self) -> None:
        # The lifespan starts the hub; an app mounted in another one may never
        # see a lifespan, so the first request starts it too.
        if not self.hub.started:
            self.hub.start()

    def stop_streams(self) -> None:
        self.stopping.set()

    async def close(self) -> None:
        self.stop_streams()
        await self.hub.close()

    def grant(self, conn: HTTPConnection, *, query_token: bool = False) -> Grant | None:
        """The grant of a request's token (``Authorization: Bearer``, or
        ``?token=`` where allowed), or None when it has no valid one."""
        if self.tokens is None:
            return Grant.everything()
        return self.tokens.authenticate(presented_token(conn, query_token=query_token))

    def watch(self, conn: HTTPConnection, grant: Grant) -> GrantWatch:
        """For a long-lived connection: tells when its token was revoked."""
        return GrantWatch(self, conn, grant, self.settings.heartbeat)

    async def start_point(
        self,
        grant: Grant,
        *,
        resume: int | None,
        backlog: int | None,
        tag: str = "",
        match_type: MatchType = MatchType.STARTSWITH,
    ) -> int | None:
        """Where a stream starts: after ``resume`` when the client gave one (it
        reconnects: what it has seen is not sent again), else just before the
        last ``backlog`` events it may see, else live (None)."""
        if resume is not None or not backlog or not self.config.served_by_saltbus():
            return resume
        path = journal_file(self.config)
        if not path.exists():
            if not self._warned_no_journal:
                self._warned_no_journal = True
                log.warning(
                    "no journal at %s: ?backlog= starts live (is the publisher's journal on, "
                    "and is its --data-dir the bridge's too?)",
                    path,
                )
            return None
        return await asyncio.to_thread(
            backlog_start, path, backlog, grant.may_read, tag=tag, match_type=match_type
        )

    def stream(
        self,
        grant: Grant,
        *,
        tag: str = "",
        match_type: MatchType | None = None,
        since: int | None = None,
    ) -> EventStream:
        return EventStream(
            self.hub,
            self.config,
            may_read=grant.may_read,
            tag=tag,
            match_type=match_type,
            since=since,
            idle=self.settings.heartbeat,
            queue_size=self.settings.queue_size,
            batch=self.settings.batch,
        )


class BodyTooLargeError(SaltbusError):
    """A request's body is over the limit (``max_event_size``): it would not fit
    in an event, so it is refused before it is all read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body over max_event_size ({limit} bytes)")
        self.limit = limit


async def read_body(conn: Request, limit: int) -> bytes:
    """The request body, refused (:class:`BodyTooLargeError`) as soon as it passes
    ``limit`` bytes rather than after it was all held in memory."""
    declared = conn.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in conn.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        parts.append(chunk)
    return b"".join(parts)


def presented_token(conn: HTTPConnection, *, query_token: bool) -> str | None:
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if query_token:
        return conn.query_params.get("token") or None
    return None


def unauthorized(message: str = "a valid token is needed") -> JSONResponse:
    return JSONResponse(
        {"error": message}, 401, headers={"WWW-Authenticate": 'Bearer realm="saltbus"'}
    )


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def fire_failure_status(exc: SaltbusError) -> int:
    """The HTTP status of a fire that failed with ``exc``: the request's fault
    (4xx), or the bus's (5xx: gone, full, too slow, or an error of its own)."""
    if isinstance(exc, FrameTooLargeError):
        return 413
    if isinstance(exc, LocalProtocolError):
        return 400
    if isinstance(exc, NoPublisherError | JournalUnavailableError):
        return 503
    if isinstance(exc, BusTimeoutError):
        return 504
    return 502


class GrantWatch:
    """Whether a long-lived connection's token is still what it was, checked
    again at most every ``every`` seconds (a busy stream is checked too, not
    only an idle one)."""

    def __init__(self, bridge: Bridge, conn: HTTPConnection, grant: Grant, every: float) -> None:
        self.bridge = bridge
        self.conn = conn
        self.grant = grant
        self.every = every
        self._next = time.monotonic() + every
        self._valid = True

    def valid(self) -> bool:
        now = time.monotonic()
        if self._valid and now >= self._next:
            self._valid = self.bridge.grant(self.conn, query_token=True) == self.grant
            self._next = now + self.every
        return self._valid


class PayloadCache:
    """The JSON ``{"tag", "data"}`` of recent events, encoded once for all the
    connections the fan-out hands the same event to. Keyed by identity (the
    entry holds the event, so its id is not reused while cached)."""

    def __init__(self, size: int = PAYLOAD_CACHE) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[Event, str]] = OrderedDict()

    def payload(self, event: Event) -> str:
        entry = self._entries.get(id(event))
        if entry is not None and entry[0] is event:
            return entry[1]
        text = dumps({"tag": event.tag, "data": event.data})
        self._entries[id(event)] = (event, text)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return text


def dumps(value: Any) -> str:
    """Compact JSON of event data; bytes become text, sets and tuples lists."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def parse_seq(*candidates: str | None) -> int | None:
    """The first candidate that is a valid sequence number (an empty or
    malformed Last-Event-ID means: start live)."""
    for value in candidates:
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None
