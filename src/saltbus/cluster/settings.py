"""The ``cluster:`` section of the configuration, checked and typed.

    cluster:
      servers: [nats://10.0.0.1:4222, nats://10.0.0.2:4222]   # or one comma-separated string
      node_name: web1            # default: the bus's id, else the short host name
      export: [salt/, app/]      # tag patterns (startswith; or TYPE:PATTERN); default all
      import: [app/]             # default all
      stream: SALTBUS            # the JetStream stream (created when missing)
      replicas: 3                # its replicas when it is created (1..5)
      max_age: 7d                # the stream's retention by age (seconds, or 30m, 12h, 7d)
      max_bytes: 1073741824      # and by size (-1: none); applied to an existing stream too
      import_start: new          # a node's first start: new | all | since TIME (ISO or 2h)
      export_batch: 256          # events per NATS message at most (1: one each)
      credentials: /etc/saltbus/nats.creds
      tls: {ca_file: ..., cert_file: ..., key_file: ..., hostname: ...}
      user: ..., password: ..., token: ..., nkeys_seed: ...
      options: {name: ..., connect_timeout: 5}   # more nats.connect() keywords, verbatim

:class:`saltbus.config.Config` keeps the section as a plain mapping (the
config layer knows nothing of NATS); this module gives it meaning.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from saltbus.cluster.subjects import DEFAULT_PREFIX, TagPattern, check_prefix
from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.event import tag_matcher

DEFAULT_STREAM: Final = "SALTBUS"
_NODE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SCHEMES: Final = ("nats://", "tls://", "ws://", "wss://")
# nats.connect() keywords the bridge sets itself: passing them through would
# break its reconnect and ordering rules (see exporter.py).
_RESERVED_OPTIONS: Final = frozenset(
    (
        "servers",
        "error_cb",
        "disconnected_cb",
        "closed_cb",
        "reconnected_cb",
        "discovered_server_cb",
        "lame_duck_mode_cb",
        "allow_reconnect",
        "max_reconnect_attempts",
        "pending_size",
        "tls",
    )
)
_PASSED_THROUGH: Final = ("user", "password", "token", "nkeys_seed")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DEFAULT_MAX_AGE: Final = 7 * 24 * 3600.0
# As the local journal's default: the stream keeps what a node away for a
# while needs, and never fills the NATS servers' disks.
DEFAULT_MAX_BYTES: Final = 1024**3
DEFAULT_EXPORT_BATCH: Final = 256


@dataclass(frozen=True, slots=True)
class ImportStart:
    """Where a node's consumer starts when it is first made: ``new`` (events
    exported from then on), ``all`` (the stream's history) or ``since`` a time,
    absolute or a ``timedelta`` before the consumer is made."""

    mode: str = "new"
    since: datetime | timedelta | None = None

    @classmethod
    def parse(cls, value: Any) -> ImportStart:
        text = str(value).strip()
        if text in ("new", "all"):
            return cls(text)
        word, _, rest = text.partition(" ")
        if word == "since" and rest.strip():
            return cls("since", _time_or_age(rest.strip()))
        raise ValueError(
            f"import_start must be new, all or 'since TIME' (ISO 8601, or an age "
            f"such as 2h), not {text!r}"
        )

    def start_time(self, now: datetime | None = None) -> datetime | None:
        """The time to deliver from (``since``), in UTC; None otherwise."""
        if isinstance(self.since, timedelta):
            return (now or datetime.now(UTC)) - self.since
        return self.since

    def __str__(self) -> str:
        if self.since is None:
            return self.mode
        if isinstance(self.since, timedelta):
            return f"since {self.since.total_seconds():g}s ago"
        return f"since {self.since.isoformat()}"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    servers: tuple[str, ...]
    node_name: str
    export: tuple[TagPattern, ...] = ()
    import_: tuple[TagPattern, ...] = ()
    stream: str = DEFAULT_STREAM
    replicas: int = 1
    subject_prefix: str = DEFAULT_PREFIX
    # Long enough to cover a resend after a short outage; a resend after a
    # longer one is dropped by the importers' per-origin sequence check.
    duplicate_window: float = 600.0
    max_age: float = DEFAULT_MAX_AGE
    max_bytes: int = DEFAULT_MAX_BYTES
    import_start: ImportStart = field(default_factory=ImportStart)
    max_in_flight: int = 512
    # Events per NATS message at most, when there is a backlog (1: one each,
    # the form a reader of the stream that knows nothing of saltbus expects).
    export_batch: int = DEFAULT_EXPORT_BATCH
    ack_timeout: float = 5.0
    credentials: Path | None = None
    tls: Mapping[str, Any] = field(default_factory=dict)
    connect_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> ClusterSettings:
        section = dict(config.cluster)
        if not section.get("servers"):
            raise ConfigError("cluster: needs servers (nats://HOST:PORT, ...)")
        try:
            return cls._from_section(section, config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cluster: {exc}") from None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any], config: Config) -> ClusterSettings:
        options = _mapping(section.get("options"), "options")
        reserved = sorted(_RESERVED_OPTIONS & options.keys())
        if reserved:
            raise ValueError(f"options cannot set {', '.join(reserved)} (the bridge sets them)")
        for name in _PASSED_THROUGH:
            if section.get(name) is not None:
                options[name] = str(section[name])
        node_name = str(section.get("node_name") or default_node_name(config))
        if not _NODE_NAME.match(node_name):
            raise ValueError(
                f"node_name {node_name!r} must be 1-64 letters, digits, '-' or '_' "
                "(it names the node's NATS consumer)"
            )
        stream = str(section.get("stream") or DEFAULT_STREAM)
        if not _STREAM_NAME.match(stream):
            raise ValueError(f"stream {stream!r} must be 1-64 letters, digits, '-' or '_'")
        settings = cls(
            servers=_servers(section["servers"]),
            node_name=node_name,
            export=_patterns(section.get("export"), "export"),
            import_=_patterns(section.get("import"), "import"),
            stream=stream,
            replicas=_number(section, "replicas", 1, int, 1, 5),
            subject_prefix=check_prefix(str(section.get("subject_prefix") or DEFAULT_PREFIX)),
            duplicate_window=_number(section, "duplicate_window", 600.0, float, 1.0),
            max_age=_duration(section, "max_age", DEFAULT_MAX_AGE),
            max_bytes=_max_bytes(section.get("max_bytes")),
            import_start=ImportStart.parse(section.get("import_start") or "new"),
            max_in_flight=_number(section, "max_in_flight", 512, int, 1, 100_000),
            export_batch=_number(section, "export_batch", DEFAULT_EXPORT_BATCH, int, 1, 65_536),
            ack_timeout=_number(section, "ack_timeout", 5.0, float, 0.1),
            credentials=Path(section["credentials"]) if section.get("credentials") else None,
            tls=_mapping(section.get("tls"), "tls"),
            connect_options=options,
        )
        unknown = set(settings.tls) - {"ca_file", "cert_file", "key_file", "hostname"}
        if unknown:
            raise ValueError(f"tls: unknown keys {sorted(unknown)}")
        return settings

    def connect_kwargs(self) -> dict[str, Any]:
        """Keywords for ``nats.connect`` besides the bridge's own."""
        kwargs: dict[str, Any] = {"name": f"saltbus-{self.node_name}"}
        kwargs.update(self.connect_options)
        if self.credentials is not None:
            kwargs["user_credentials"] = str(self.credentials)
        if self.tls:
            kwargs["tls"] = self._ssl_context()
            if self.tls.get("hostname"):
                kwargs["tls_hostname"] = str(self.tls["hostname"])
        return kwargs

    def _ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.tls.get("ca_file"))
            if self.tls.get("cert_file"):
                context.load_cert_chain(self.tls["cert_file"], self.tls.get("key_file"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cluster: tls: {exc}") from None
        return context


def default_node_name(config: Config) -> str:
    """The bus's id, else the host's short name (both are what Salt names a host by)."""
    name = config.id or socket.gethostname().split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "saltbus"


def _servers(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"servers must be a list of URLs or one comma-separated string: {value!r}")
    servers = tuple(s.strip() for s in items if s.strip())
    for server in servers:
        if not server.startswith(_SCHEMES):
            raise ValueError(f"server {server!r} must be a nats://HOST:PORT (or tls://) URL")
    if not servers:
        raise ValueError("servers is empty")
    return servers


def _patterns(value: Any, name: str) -> tuple[TagPattern, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{name} must be a tag pattern or a list of them: {value!r}")
    patterns = tuple(dict.fromkeys(TagPattern.parse(item) for item in items))
    for pattern in patterns:
        tag_matcher(pattern.pattern, pattern.match_type)  # a bad regex raises ConfigError here
    return patterns


def _duration(section: Mapping[str, Any], name: str, default: float) -> float:
    """Seconds, from a number or a text such as ``90s``, ``30m``, ``12h``, ``7d``."""
    value = section.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ValueError(f"{name} must be seconds or a duration like 12h or 7d, not {value!r}")
        value = float(found[1]) * _UNITS[found[2]]
    return float(_number({name: value}, name, default, float, 1.0))


def _max_bytes(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_BYTES
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value > 0):
        raise ValueError(f"max_bytes must be a number of bytes (or -1: no limit), not {value!r}")
    return value


def _time_or_age(text: str) -> datetime | timedelta:
    found = _DURATION.match(text)
    if found is not None:
        return timedelta(seconds=float(found[1]) * _UNITS[found[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"import_start: since {text!r}: not an ISO 8601 time (2026-05-01T12:00:00Z) "
            "nor an age (2h, 3d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, not {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _number(
    section: Mapping[str, Any],
    name: str,
    default: Any,
    kind: type[int] | type[float],
    low: float,
    high: float = float("inf"),
) -> Any:
    value = section.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    number = kind(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, not {number}")
    return number
