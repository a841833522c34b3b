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
up to its last id, and an id below it was added. Refused events are read
back all the same: one the stream does not hold is logged and counted
``lost``. Streams shared by several buses need ``{master_id}`` in the
template. With ``ids: auto``, at least once.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

import redis
from redis.typing import EncodableT, FieldT

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

log = logging.getLogger("saltbus.returners")
# An entry's fields as XADD takes them (all str here, as XRANGE gives them back decoded).
Fields = dict[FieldT, EncodableT]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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
        self.lost = 0  # refused by Redis and not in the stream either
        self._client: redis.Redis | None = None

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        client = self._connect()
        entries = [self._entry(event) for event in events]
        try:
            # A transaction, not a plain pipeline: Redis may refuse a plain
            # pipeline's first XADDs (LOADING, at the end of a restart) and add
            # the later ones, and the retry would then find the refused events
            # below the stream's top and count them as duplicates (issue 20).
            pipe = client.pipeline(transaction=True)
            for stream, entry_id, fields in entries:
                pipe.xadd(
                    stream,
                    fields,
                    id=entry_id,
                    maxlen=self.maxlen or None,
                    approximate=True,
                )
            results = pipe.execute(raise_on_error=False)
            refused: list[tuple[str, str, Fields]] = []
            for entry, result in zip(entries, results, strict=True):
                if isinstance(result, redis.ResponseError):
                    if _NOT_ABOVE not in str(result) or entry[1] == "*":
                        raise result
                    refused.append(entry)
            if refused:
                self._check_refused(client, refused)
        except redis.RedisError:
            self._disconnect()
            raise

    def _entry(self, event: Mapping[str, Any]) -> tuple[str, str, Fields]:
        """The stream, entry id and fields of ``event``."""
        seq = event.get("seq")
        entry_id = f"{seq}-0" if self.ids == "seq" and isinstance(seq, int) else "*"
        tag = str(event["tag"])
        fields: Fields = {
            "tag": tag,
            "data": to_json(event["data"]),
            "seq": "" if seq is None else str(seq),
            "time": "" if event.get("time") is None else repr(event["time"]),
            "master_id": self.master_id,
        }
        return self.stream_for(tag), entry_id, fields

    def _check_refused(self, client: redis.Redis, refused: list[tuple[str, str, Fields]]) -> None:
        """Events Redis refused as not above their stream's last id: a
        duplicate when the stream has that entry, the same event; else lost,
        since Redis will never take that id again (another writer on the
        stream, or a journal started again below the stream's seqs)."""
        by_stream: dict[str, list[tuple[str, Fields]]] = {}
        for stream, entry_id, fields in refused:
            by_stream.setdefault(stream, []).append((entry_id, fields))
        for stream, wanted in by_stream.items():
            ids = [entry_id for entry_id, _ in wanted]
            first = min(ids, key=_id_key)
            last = max(ids, key=_id_key)
            found: Any = client.xrange(stream, first, last)
            present = {
                _text(entry_id): {_text(k): _text(v) for k, v in entry.items()}
                for entry_id, entry in found
            }
            oldest: str | None = None
            lost: list[str] = []
            for entry_id, fields in wanted:
                if present.get(entry_id) == fields:
                    self.duplicates += 1  # added by an earlier attempt of this batch
                    continue
                if self.maxlen and entry_id not in present:
                    if oldest is None:
                        head: Any = client.xrange(stream, count=1)
                        oldest = _text(head[0][0]) if head else last
                    if _id_key(entry_id) < _id_key(oldest):
                        self.duplicates += 1  # trimmed since: it was there
                        continue
                lost.append(entry_id)
            if lost:
                self.lost += len(lost)
                log.error(
                    "redis_stream: %d events (ids %s..%s) refused as not above the last id "
                    "of stream %r, which does not hold them: lost (does another writer add "
                    "to that stream, or was the journal started again?)",
                    len(lost),
                    lost[0],
                    lost[-1],
                    stream,
                )

    def stream_for(self, tag: str) -> str:
        return self.stream.format(tag=tag, prefix=tag.partition("/")[0], master_id=self.master_id)

    def close(self) -> None:
        self._disconnect()

    def stats(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates, "lost": self.lost}

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
