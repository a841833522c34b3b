"""The ``cluster:`` section of the configuration, checked and typed.

    cluster:
      servers: [nats://10.0.0.1:4222, nats://10.0.0.2:4222]   # or one comma-separated string
      node_name: web1            # default: the bus's id, else the short host name
      export: [salt/, app/]      # tag patterns (startswith; or TYPE:PATTERN); default all
      import: [app/]             # default all
      stream: SALTBUS            # the JetStream stream (created when missing)
      replicas: 3                # its replicas when it is created (1..5)
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
    max_age: float = 7 * 24 * 3600.0
    max_in_flight: int = 512
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
            max_age=_number(section, "max_age", 7 * 24 * 3600.0, float, 1.0),
            max_in_flight=_number(section, "max_in_flight", 512, int, 1, 100_000),
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
