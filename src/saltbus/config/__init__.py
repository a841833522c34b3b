"""Settings: one typed, frozen :class:`Config`, with Salt's option names.

Sources, later ones winning: defaults, a YAML file (Salt's own master and
minion config files work: keys saltbus does not know are ignored), ``SALTBUS_*``
environment variables, then explicit overrides (CLI flags, or the ``opts`` dict
of the Salt-style API).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import yaml

from saltbus.config.saltfiles import salt_config_role
from saltbus.config.sections import (
    REACTOR_FIELDS,
    RETURNER_FIELDS,
    check_reactor_settings,
    check_returner_settings,
    cluster_section,
    convert_reactor_setting,
    convert_returner_setting,
    redact_section,
    to_bool,
    with_salt_returner_options,
)
from saltbus.errors import ConfigError
from saltbus.event import MatchType
from saltbus.wire import (
    DEFAULT_GENERATION,
    DEFAULT_MAX_EVENT_SIZE,
    FRAME_OVERHEAD,
    GENERATIONS,
    Generation,
)

Node: TypeAlias = Literal["master", "minion"]
IpcMode: TypeAlias = Literal["ipc", "tcp"]
LogFormat: TypeAlias = Literal["text", "json"]
Journaling: TypeAlias = Literal["none", "batch", "fsync"]
# A unix socket path, or a (host, port) pair in ipc_mode tcp.
Address: TypeAlias = Path | tuple[str, int]

ENV_PREFIX: Final = "SALTBUS_"
# A longer busy poll is a core spent on waiting: 10 ms is far past any benefit.
MAX_BUSY_POLL_US: Final = 10_000
TCP_HOST: Final = "127.0.0.1"
UNIX_PATH_MAX: Final = 107
# Salt's log levels, quietest last; a Salt config file may name any of them.
LOG_LEVELS: Final = (
    "all",
    "garbage",
    "trace",
    "debug",
    "profile",
    "info",
    "warning",
    "error",
    "critical",
    "quiet",
)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a publisher or a client needs to find and speak to one bus."""

    sock_dir: Path
    node: Node = "master"
    id: str | None = None
    hash_id: str | None = None
    hash_type: str = "sha256"
    ipc_mode: IpcMode = "ipc"
    tcp_master_pub_port: int = 4512
    tcp_master_pull_port: int = 4513
    tcp_pub_port: int = 4510
    tcp_pull_port: int = 4511
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    event_match_type: MatchType = MatchType.STARTSWITH
    salt_version: str = DEFAULT_GENERATION
    # Per-subscriber queue bounds: with a reader that stopped reading, the
    # publisher holds at most this much for it (plus the kernel's socket buffer).
    subscriber_queue_events: int = 100_000
    subscriber_queue_bytes: int = 8 * 1024 * 1024
    # A Salt listener over those bounds slows the firing side while it reads;
    # one that takes nothing for this long is stuck and is disconnected.
    # (Salt 3008's publish_drain_timeout, which a Salt config file sets too.)
    subscriber_stall_timeout: float = 5.0
    # After writing events to listeners, the publisher's loop keeps polling
    # this many microseconds before it sleeps (0: off): on a machine whose idle
    # CPUs halt, listeners get each event sooner, for some CPU while the bus is
    # busy. See saltbus.server.busypoll.
    busy_poll_us: int = 100
    # The journal: none, batch (group commit; survives a crash of the process)
    # or fsync (on disk before an event is acknowledged). One SQLite file per
    # bus under data_dir (default: /var/lib/saltbus as root, else
    # $XDG_DATA_HOME/saltbus).
    journal: Journaling = "batch"
    data_dir: Path | None = None
    # While the journal cannot commit (disk full...): block holds events until
    # it can (nothing delivered unjournaled); deliver goes on delivering and
    # tells resuming readers which seqs were never journaled.
    journal_on_error: Literal["block", "deliver"] = "block"
    # Retention. Age yields to consumers in the daemon that have not taken an
    # event yet (returners, federation export, in-process reactor); size does not.
    journal_max_age: float = 7 * 24 * 3600.0
    journal_max_bytes: int = 1024**3
    # Event returners, with Salt's option names: the returners fed from the
    # journal, batching (event_return_queue events, 0: each as soon as it is
    # journaled; event_return_queue_max_seconds, 0: no timer), fnmatch filters
    # on tags (whitelist first, then blacklist), and each returner's options
    # (returner_options: {name: {...}}, or Salt's flat returner.NAME.OPTION keys).
    event_return: tuple[str, ...] = ()
    event_return_queue: int = 0
    event_return_queue_max_seconds: float = 0.0
    event_return_whitelist: tuple[str, ...] = ()
    event_return_blacklist: tuple[str, ...] = ()
    returner_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # saltbus's: a failing returner is retried with backoff doubling up to this.
    event_return_retry_max_seconds: float = 30.0
    # Redaction rules (keys, paths, values, defaults, marker; None: off),
    # applied to what returners get and to `history --redact`; with
    # redact_journal, to every event before it is journaled or delivered.
    redact: Mapping[str, Any] | None = None
    redact_journal: bool = False
    # The reactor (saltbus.reactor), with Salt's option names where Salt has
    # one: Salt's `reactor:` list of {tag glob: [reaction files]}, kept as
    # ((glob, (file, ...)), ...) so the Config stays immutable; the worker pool
    # and its queue; how deep a chain of reactions may go; catching up from the
    # journal after a restart; and the name its position and pid file are kept under.
    reactor: tuple[tuple[str, tuple[str, ...]], ...] = ()
    reactor_worker_threads: int = 10
    reactor_worker_hwm: int = 10_000
    reactor_max_depth: int = 5
    reactor_catch_up: bool = True
    reactor_name: str = "reactor"
    # Rules over several events (correlation, counting), by name, kept as
    # given; saltbus.reactor.multi.defs checks what they say.
    reactor_rules: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Salt's own reactions (local, runner, wheel): the python Salt runs on
    # (default: found from salt-master on PATH), and the master's config file
    # (default: the --config file when it is Salt's, else $SALT_MASTER_CONFIG,
    # else /etc/salt/master). With federation, reactor_scope `local` reacts
    # only to events that originated on this node, `all` to imported ones too.
    salt_python: Path | None = None
    salt_master_config: Path | None = None
    # For caller reactions: the minion's config (default: --config when it is
    # a minion's, else $SALT_MINION_CONFIG, else /etc/salt/minion).
    salt_minion_config: Path | None = None
    # For a master on another host: salt-api's url and eauth credentials
    # (saltbus.reactor.saltapi checks the keys).
    salt_api: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reactor_scope: str = "local"
    # reactor_scope leader: how long the leader's lease lasts unrenewed.
    reactor_leader_ttl: float = 5.0
    # Missed returns (saltbus.reactor.missing): fire saltbus/job/<jid>/missing
    # naming the minions of a Salt job that have not returned this many seconds
    # after its salt/job/<jid>/new (the event does not carry the job's timeout);
    # at most max_jobs jobs are watched at once.
    reactor_missing_returns: bool = False
    reactor_missing_returns_timeout: float = 60.0
    reactor_missing_returns_max_jobs: int = 10_000
    # A reactor whose subscription saw nothing for this long probes it, and
    # re-establishes it when the probe does not come back (0: no watchdog).
    reactor_watchdog: float = 120.0
    # Federation over NATS JetStream (saltbus.cluster): the `cluster:` mapping
    # (servers, node_name, export, import, stream, replicas, credentials, tls,
    # ...), kept as given; saltbus.cluster.settings checks what the keys mean.
    cluster: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Access (issue 8): by default only the daemon's own user reaches the bus.
    # sock_group opens it to one group (sock_dir 0750, sockets 0660); every
    # connection's credentials are checked too, so modes loosened by hand open
    # nothing. In tcp mode saltbus's clients prove themselves with a secret
    # from a 0600 file in sock_dir; tcp_allow_unauthenticated admits Salt's
    # clients, which cannot.
    sock_group: str | None = None
    allow_root: bool = False
    tcp_allow_unauthenticated: bool = False
    max_connections: int = 1024
    partial_frame_timeout: float = 30.0
    # Logging (set up by saltbus.cli.logs): Salt's log_level names and log_file
    # (a path; unset: stderr), and saltbus's log_format, text or json lines.
    log_level: str = "info"
    log_file: Path | None = None
    log_format: LogFormat = "text"
    # Metrics and health (saltbus.metrics): HOST:PORT serving /metrics, /healthz
    # and /readyz (None: not served; port 0: any free port, logged); readiness
    # fails while a returner is more than metrics_max_returner_lag events behind.
    metrics_listen: str | None = None
    metrics_max_returner_lag: int = 10_000

    def __post_init__(self) -> None:
        if self.node not in ("master", "minion"):
            raise ConfigError(f"node must be 'master' or 'minion', not {self.node!r}")
        if self.ipc_mode not in ("ipc", "tcp"):
            raise ConfigError(f"ipc_mode must be 'ipc' or 'tcp', not {self.ipc_mode!r}")
        if self.node == "minion" and not (self.id or self.hash_id):
            raise ConfigError("a minion bus needs an id (--id, or 'id' in the config file)")
        for name in ("subscriber_queue_events", "subscriber_queue_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if self.journal not in ("none", "batch", "fsync"):
            raise ConfigError(f"journal must be none, batch or fsync, not {self.journal!r}")
        if self.journal_on_error not in ("block", "deliver"):
            raise ConfigError(
                f"journal_on_error must be block or deliver, not {self.journal_on_error!r}"
            )
        if self.journal_max_age <= 0 or self.journal_max_bytes <= 0:
            raise ConfigError("journal_max_age and journal_max_bytes must be positive")
        if self.max_event_size <= 0:
            raise ConfigError(f"max_event_size must be positive, not {self.max_event_size}")
        if self.salt_version not in GENERATIONS:
            known = ", ".join(GENERATIONS)
            raise ConfigError(f"salt_version must be one of {known}, not {self.salt_version!r}")
        if not _usable_hash_type(self.hash_type):
            raise ConfigError(f"hash_type {self.hash_type!r} is not a hashlib algorithm")
        for name in (
            "tcp_master_pub_port",
            "tcp_master_pull_port",
            "tcp_pub_port",
            "tcp_pull_port",
        ):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a TCP port, not {port}")
        if not self.subscriber_stall_timeout > 0:
            raise ConfigError(
                f"subscriber_stall_timeout must be positive, not {self.subscriber_stall_timeout}"
            )
        if not 0 <= self.busy_poll_us <= MAX_BUSY_POLL_US:
            raise ConfigError(
                f"busy_poll_us must be 0 (off) to {MAX_BUSY_POLL_US} microseconds, "
                f"not {self.busy_poll_us}"
            )
        if self.max_connections <= 0 or self.partial_frame_timeout <= 0:
            raise ConfigError("max_connections and partial_frame_timeout must be positive")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, not {self.log_format!r}")
        check_returner_settings(self)
        check_reactor_settings(self)
        if self.redact_journal and self.redact is None:
            raise ConfigError("redact_journal needs redact rules (redact: true for the defaults)")

    # -- derived ---------------------------------------------------------

    @property
    def generation(self) -> Generation:
        return GENERATIONS[self.salt_version]

    @property
    def max_frame_size(self) -> int:
        return self.max_event_size + FRAME_OVERHEAD

    @property
    def socket_prefix(self) -> str:
        if self.node == "master":
            return "master_event"
        ident = self.hash_id or self.id or ""
        digest = hashlib.new(self.hash_type, ident.encode("utf-8")).hexdigest()
        return f"minion_event_{digest[:10]}"

    def served_by_saltbus(self) -> bool:
        """Whether a saltbus publisher serves this bus now: it holds the lock
        file locked. Clients speak saltbus's extensions only then: Salt 3007 and
        3008 log a traceback for what a listener writes in the wrong framing,
        and never answer a subscription. A lock file nobody holds was left by a
        publisher that died (kill -9); the publisher there now may be Salt's."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # another user's file: its presence is all we can see
        try:
            # Held by the publisher (EWOULDBLOCK), or the check is impossible.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock just taken
        return False

    @property
    def secret_path(self) -> Path:
        """The tcp-mode secret saltbus's clients present (readable like the sockets)."""
        return self.sock_dir / f".{self.socket_prefix}.saltbus.secret"

    @property
    def lock_path(self) -> Path:
        """The file a saltbus publisher holds locked while it serves this bus;
        its presence tells clients the publisher is saltbus, not Salt."""
        return self.sock_dir / f".{self.socket_prefix}.saltbus.lock"

    @property
    def pub_address(self) -> Address:
        """Where the publisher sends events to listeners."""
        if self.ipc_mode == "tcp":
            port = self.tcp_master_pub_port if self.node == "master" else self.tcp_pub_port
            return (TCP_HOST, port)
        return self._socket_path("pub")

    @property
    def pull_address(self) -> Address:
        """Where firing clients send events to the publisher."""
        if self.ipc_mode == "tcp":
            port = self.tcp_master_pull_port if self.node == "master" else self.tcp_pull_port
            return (TCP_HOST, port)
        return self._socket_path("pull")

    def _socket_path(self, kind: str) -> Path:
        path = self.sock_dir / f"{self.socket_prefix}_{kind}.ipc"
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ConfigError(
                f"socket path {path} is {len(os.fsencode(path))} bytes, over the "
                f"{UNIX_PATH_MAX}-byte limit of unix sockets; use a shorter sock_dir"
            )
        return path

    def replace(self, **changes: Any) -> Config:
        return load_config(overrides=changes, base=self)

    # -- loading ---------------------------------------------------------

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Defaults, then the YAML file, then ``SALTBUS_*`` variables, then overrides.

        Overrides whose value is None are ignored, so CLI flags that were not
        given can be passed straight through.
        """
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_yaml(Path(config_file)))
        environ = os.environ if env is None else env
        values.update(_from_env(environ))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return _build(values, environ)


_FIELDS: Final = {f.name: f for f in dataclasses.fields(Config)}
_INT_FIELDS: Final = frozenset(
    (
        "busy_poll_us",
        "subscriber_queue_events",
        "subscriber_queue_bytes",
        "tcp_master_pub_port",
        "tcp_master_pull_port",
        "tcp_pub_port",
        "tcp_pull_port",
        "max_event_size",
        "journal_max_bytes",
        "max_connections",
        "event_return_queue",
        "metrics_max_returner_lag",
    )
)


def load_config(overrides: Mapping[str, Any], base: Config) -> Config:
    # Unset (None) fields stay unset: through _convert, None would become "None".
    values = {name: getattr(base, name) for name in _FIELDS if getattr(base, name) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(values)


def default_sock_dir(node: str = "master", env: Mapping[str, str] | None = None) -> Path:
    """Salt's own directory as root; otherwise a directory the user can create."""
    if os.geteuid() == 0:
        return Path("/var/run/salt") / node
    runtime = (os.environ if env is None else env).get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "saltbus"
    return Path(f"/tmp/saltbus-{os.geteuid()}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8: {exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    # A key with no value ("id:") is as if it were absent, as with overrides.
    values = {k: v for k, v in loaded.items() if k in _FIELDS and v is not None}
    if salt_config_role(frozenset(map(str, loaded))) is not None:
        # A Salt daemon's own file: its log_file is Salt's log, not saltbus's.
        values.pop("log_file", None)
    if loaded.get("publish_drain_timeout") is not None:
        values.setdefault("subscriber_stall_timeout", loaded["publish_drain_timeout"])
    return with_salt_returner_options(loaded, values)


def _usable_hash_type(name: object) -> bool:
    # Salt hexdigests with hashlib.<hash_type>; the shake_* digests need a length.
    if not isinstance(name, str):
        return False
    try:
        hashlib.new(name, b"").hexdigest()
    except (TypeError, ValueError):
        return False
    return True


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: env[ENV_PREFIX + name.upper()]
        for name in _FIELDS
        if env.get(ENV_PREFIX + name.upper(), "") != ""
    }


def _build(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        converted[name] = _convert(name, value)
    if "sock_dir" not in converted:
        converted["sock_dir"] = default_sock_dir(str(converted.get("node", "master")), env)
    return Config(**converted)


def _convert(name: str, value: Any) -> Any:
    if name in _INT_FIELDS:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, not {value!r}") from None
    if name in (
        "sock_dir",
        "data_dir",
        "log_file",
        "salt_python",
        "salt_master_config",
        "salt_minion_config",
    ):
        return Path(os.path.expanduser(str(value)))
    if name == "redact":
        return redact_section(value)
    if name in ("allow_root", "tcp_allow_unauthenticated", "redact_journal"):
        return to_bool(name, value)
    if name in ("sock_group", "metrics_listen"):
        return str(value)
    if name in (
        "journal_max_age",
        "partial_frame_timeout",
        "subscriber_stall_timeout",
        "reactor_leader_ttl",
        "reactor_watchdog",
    ):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if name == "journal" and value is False:
        return "none"  # YAML reads a bare `none`... as a string, but `off`/`no` as False
    if name == "event_match_type":
        return MatchType.parse(str(value))
    if name == "salt_version":
        # YAML reads 3007 as an int; "3007.8" names the same generation.
        return str(value).split(".", 1)[0]
    if name in ("id", "hash_id"):
        return str(value)
    if name in ("log_level", "log_format"):
        return str(value).lower()
    if name in RETURNER_FIELDS:
        return convert_returner_setting(name, value)
    if name in REACTOR_FIELDS:
        return convert_reactor_setting(name, value)
    if name == "cluster":
        return cluster_section(value)
    return value
