"""``redis_stream``: events appended to Redis streams with ``XADD``.

Each event is an entry with the fields ``tag``, ``data`` (JSON), ``seq``,
``time`` and ``master_id``; consumers read them with consumer groups
(``XREADGROUP``). Options (``returner_options: {redis_stream: {...}}``):
``url`` (``redis://``, ``rediss://`` or ``unix://``), or ``host`` (127.0.0.1),
``port`` (6379), ``db`` (0), ``username``, ``password``, ``ssl`` (false);
``stream``, a template over the event (``{tag}``, ``{prefix}``: the tag up to
its first ``/``, ``{master_id}``; default ``saltbus:events``); ``maxlen``
(``MAXLEN ~`` trimming, 100000; 0: never trimmed); ``ids`` (``seq``: the
entry id is ``<seq>-0``; ``auto``: Redis's time-based ids); ``socket_timeout``
(5 s); ``master_id`` (the bus's id, else the host name).

Exactly once with ``ids: seq``: Redis refuses an id not above a stream's
last, so an event of a retried batch that was already added is refused and
counted as a duplicate, never added twice. That holds because a batch is one
``MULTI``/``EXEC``, added whole or not at all: a stream then holds every event
up to its last id, and an id below it was added. Streams shared by several
buses need ``{master_id}`` in the template. With ``ids: auto``, at least once.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Final

import redis

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known, master_id

DEFAULT_STREAM: Final = "saltbus:events"
DEFAULT_MAXLEN: Final = 100_000
OPTIONS: Final = (
    Option("url", "string", "", "redis://, rediss:// or unix:// (instead of host, port...)"),
    Option("host", "string", "127.0.0.1", "the server's address"),
    Option("port", "integer", "6379", "the server's port"),
    Option("db", "integer", "0", "the database number"),
    Option("username", "string", "", "Redis ACL user"),
    Option("password", "string", "", "Redis password"),
    Option("ssl", "boolean", "false", "connect with TLS"),
    Option(
        "stream",
        "template",
        DEFAULT_STREAM,
        "the stream's name, over {tag}, {prefix} (the tag up to its first /), {master_id}",
    ),
    Option("maxlen", "integer", str(DEFAULT_MAXLEN), "MAXLEN ~ trimming (0: never trimmed)"),
    Option("ids", "seq or auto", "seq", "entry ids <seq>-0 (exactly once) or Redis's own"),
    Option("socket_timeout", "seconds", "5", "for connecting and for each command"),
    master_id(),
)
# What Redis answers to an XADD whose id is not above the stream's last.
_NOT_ABOVE: Final = "equal or smaller"


class RedisStreamReturner:
    """XADD per event, one MULTI/EXEC per batch; connects lazily, again after errors."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("redis_stream", options, OPTIONS)
        self.master_id = str(options.get("master_id") or socket.gethostname())
        self.stream = str(options.get("stream") or DEFAULT_STREAM)
        try:
            self.stream.format(tag="a/b", prefix="a", master_id="m")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"redis_stream: stream template {self.stream!r} is not usable "
                f"({type(exc).__name__}: {exc}); it may name {{tag}}, {{prefix}}, {{master_id}}"
            ) from None
        try:
            self.maxlen = int(options.get("maxlen", DEFAULT_MAXLEN))
            timeout = float(options.get("socket_timeout", 5))
        except (TypeError, ValueError):
            raise ConfigError("redis_stream: maxlen and socket_timeout must be numbers") from None
        if self.maxlen < 0:
            raise ConfigError(f"redis_stream: maxlen must be 0 or more, not {self.maxlen}")
        self.ids = str(options.get("ids", "seq"))
        if self.ids not in ("seq", "auto"):
            raise ConfigError(f"redis_stream: ids must be seq or auto, not {self.ids!r}")
        self._client_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        self._url = options.get("url")
        if self._url is None:
            self._client_options.update(
                host=str(options.get("host", "127.0.0.1")),
                port=int(options.get("port", 6379)),
                db=int(options.get("db", 0)),
                username=options.get("username"),
                password=options.get("password"),
                ssl=bool(options.get("ssl", False)),
            )
        self.duplicates = 0
        self._client: redis.Redis | None = None

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        client = self._connect()
        try:
            # A transaction, not a plain pipeline: Redis may refuse a plain
            # pipeline's first XADDs (LOADING, at the end of a restart) and add
            # the later ones, and the retry would then find the refused events
            # below the stream's top and count them as duplicates (issue 20).
            pipe = client.pipeline(transaction=True)
            for event in events:
                seq = event.get("seq")
                entry_id = f"{seq}-0" if self.ids == "seq" and isinstance(seq, int) else "*"
                pipe.xadd(
                    self.stream_for(str(event["tag"])),
                    {
                        "tag": str(event["tag"]),
                        "data": to_json(event["data"]),
                        "seq": "" if seq is None else str(seq),
                        "time": "" if event.get("time") is None else repr(event["time"]),
                        "master_id": self.master_id,
                    },
                    id=entry_id,
                    maxlen=self.maxlen or None,
                    approximate=True,
                )
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            self._disconnect()
            raise
        for result in results:
            if isinstance(result, redis.ResponseError):
                if _NOT_ABOVE in str(result):
                    self.duplicates += 1  # added by an earlier attempt of this batch
                    continue
                raise result

    def stream_for(self, tag: str) -> str:
        return self.stream.format(tag=tag, prefix=tag.partition("/")[0], master_id=self.master_id)

    def close(self) -> None:
        self._disconnect()

    def stats(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates}

    def _connect(self) -> redis.Redis:
        if self._client is None:
            if self._url is not None:
                self._client = redis.Redis.from_url(str(self._url), **self._client_options)
            else:
                self._client = redis.Redis(**self._client_options)
        return self._client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
