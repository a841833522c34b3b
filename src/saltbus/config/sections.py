"""The settings sections beyond the bus itself: Salt's event returner options,
the reactor list, and the federation (``cluster:``) mapping. Each is parsed
from what a YAML file, an environment variable or a flag gives, and checked
against the rest of the configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import yaml

from saltbus.errors import ConfigError

if TYPE_CHECKING:
    from saltbus.config import Config


# -- event returners ---------------------------------------------------------

RETURNER_FIELDS: Final = frozenset(
    (
        "event_return",
        "event_return_queue_max_seconds",
        "event_return_whitelist",
        "event_return_blacklist",
        "returner_options",
        "event_return_retry_max_seconds",
    )
)


def convert_returner_setting(name: str, value: Any) -> Any:
    if name in ("event_return_queue_max_seconds", "event_return_retry_max_seconds"):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if name == "returner_options":
        if isinstance(value, str):  # from SALTBUS_RETURNER_OPTIONS: YAML or JSON
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, Mapping) or not all(
            isinstance(opts, Mapping) or opts is None for opts in value.values()
        ):
            raise ConfigError(f"returner_options must map returner names to mappings: {value!r}")
        return {str(ret): dict(opts or {}) for ret, opts in value.items()}
    # Salt takes a string or a list; a string may also list names with commas.
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{name} must be a string or a list of strings, not {value!r}")
    if name == "event_return":
        items = [part.strip() for item in items for part in item.split(",")]
    return tuple(item for item in items if item)


def check_returner_settings(config: Config) -> None:
    if config.event_return_queue < 0:
        raise ConfigError(f"event_return_queue must be 0 or more, not {config.event_return_queue}")
    if not 0 <= config.event_return_queue_max_seconds < float("inf"):
        raise ConfigError(
            "event_return_queue_max_seconds must be 0 (off) or a number of seconds, "
            f"not {config.event_return_queue_max_seconds}"
        )
    if not 0 < config.event_return_retry_max_seconds < float("inf"):
        raise ConfigError(
            "event_return_retry_max_seconds must be positive, "
            f"not {config.event_return_retry_max_seconds}"
        )
    if len(set(config.event_return)) != len(config.event_return):
        raise ConfigError(f"event_return names a returner twice: {list(config.event_return)}")


# Salt's returners whose options are top-level ``NAME.OPTION`` keys
# (``rawfile_json.filename``, ``mysql.host``), without the ``returner.`` prefix.
SALT_FLAT_RETURNERS: Final = frozenset(("rawfile_json", "mysql"))


def with_salt_returner_options(loaded: Mapping[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Fold Salt's ``returner.NAME.OPTION: value``, ``returner.NAME: {...}``
    and ``NAME.OPTION`` (for SALT_FLAT_RETURNERS) keys into ``returner_options``
    (whose own entries win)."""
    gathered: dict[str, dict[str, Any]] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or value is None:
            continue
        if key.startswith("returner."):
            name, _, option = key[len("returner.") :].partition(".")
        elif key.partition(".")[0] in SALT_FLAT_RETURNERS:
            name, _, option = key.partition(".")
        else:
            continue
        if option:
            gathered.setdefault(name, {})[option] = value
        elif isinstance(value, Mapping):
            gathered.setdefault(name, {}).update({str(k): v for k, v in value.items()})
    if not gathered:
        return values
    own = values.get("returner_options")
    if own is not None and not isinstance(own, Mapping):
        return values  # _convert reports it
    if own is not None:
        for name, opts in own.items():
            if isinstance(opts, Mapping):
                gathered.setdefault(str(name), {}).update(opts)
    values["returner_options"] = gathered
    return values


# -- redaction -----------------------------------------------------------------

_REDACT_LISTS: Final = ("keys", "paths", "values")


def redact_section(value: Any) -> dict[str, Any] | None:
    """``redact:``: true (Salt's usual suspects only), false (off), or a
    mapping of keys/paths/values lists, defaults (bool) and marker."""
    if isinstance(value, str):  # from SALTBUS_REDACT: YAML or JSON
        value = yaml.safe_load(value) if value.strip() else None
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"redact must be true, false or a mapping of rules, not {value!r}")
    unknown = set(value) - {*_REDACT_LISTS, "defaults", "marker"}
    if unknown:
        raise ConfigError(f"redact: unknown keys {sorted(map(str, unknown))}")
    rules: dict[str, Any] = {}
    for name in _REDACT_LISTS:
        items = value.get(name) or []
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ConfigError(f"redact.{name} must be a list of strings, not {items!r}")
        rules[name] = tuple(items)
    for pattern in rules["values"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"redact.values: {pattern!r} is not a regular expression: {exc}"
            ) from None
    rules["defaults"] = to_bool("redact.defaults", value.get("defaults", True))
    marker = value.get("marker", "**REDACTED**")
    if not isinstance(marker, str) or not marker:
        raise ConfigError(f"redact.marker must be a non-empty string, not {marker!r}")
    rules["marker"] = marker
    return rules


# -- the reactor ---------------------------------------------------------------

REACTOR_FIELDS: Final = frozenset(
    (
        "reactor",
        "reactor_worker_threads",
        "reactor_worker_hwm",
        "reactor_max_depth",
        "reactor_catch_up",
        "reactor_name",
        "reactor_scope",
        "reactor_rules",
        "reactor_missing_returns",
        "reactor_missing_returns_timeout",
        "reactor_missing_returns_max_jobs",
        "salt_api",
    )
)
_REACTOR_NAME: Final = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_TRUE: Final = frozenset(("1", "true", "yes", "on"))
_FALSE: Final = frozenset(("0", "false", "no", "off"))


def to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def convert_reactor_setting(name: str, value: Any) -> Any:
    if name == "reactor":
        return _reactor_list(value)
    if name in ("reactor_catch_up", "reactor_missing_returns"):
        return to_bool(name, value)
    if name == "reactor_missing_returns_timeout":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if name in ("reactor_name", "reactor_scope"):
        return str(value)
    if name == "reactor_rules":
        if isinstance(value, str):  # from SALTBUS_REACTOR_RULES: YAML or JSON
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, Mapping) or not all(
            isinstance(v, Mapping) for v in value.values()
        ):
            raise ConfigError(f"reactor_rules must map rule names to rules, not {value!r}")
        return {str(k): v for k, v in value.items()}
    if name == "salt_api":
        if not isinstance(value, Mapping):
            raise ConfigError(f"salt_api must map url, username, password and eauth, not {value!r}")
        return dict(value)
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None


def _reactor_list(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Salt's form, a list of single-key mappings ``{'<tag glob>': [files]}``
    (one file may be a plain string), or the tuple form this returns."""
    if isinstance(value, str):  # from SALTBUS_REACTOR: YAML or JSON
        value = yaml.safe_load(value) if value.strip() else []
    if not isinstance(value, list | tuple):
        raise ConfigError(
            "reactor must be a list of {'<tag glob>': [reaction files]} mappings, "
            f"not {type(value).__name__}"
        )
    entries: list[tuple[str, tuple[str, ...]]] = []
    for number, item in enumerate(value, 1):
        if isinstance(item, Mapping) and len(item) == 1:
            glob, files = next(iter(item.items()))
        elif isinstance(item, tuple) and len(item) == 2:
            glob, files = item
        else:
            raise ConfigError(
                f"reactor item {number} must be one '<tag glob>': [reaction files] "
                f"mapping, not {item!r}"
            )
        if isinstance(files, str):
            files = [files]
        if (
            not isinstance(glob, str)
            or not isinstance(files, list | tuple)
            or not files
            or not all(isinstance(f, str) and f for f in files)
        ):
            raise ConfigError(
                f"reactor item {number} ({glob!r}) must map a tag glob to a list of "
                f"reaction file paths, not {files!r}"
            )
        entries.append((glob, tuple(files)))
    return tuple(entries)


def check_reactor_settings(config: Config) -> None:
    for name in (
        "reactor_worker_threads",
        "reactor_worker_hwm",
        "reactor_max_depth",
        "reactor_missing_returns_timeout",
        "reactor_missing_returns_max_jobs",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, not {getattr(config, name)}")
    if config.reactor_scope not in ("local", "all", "leader"):
        raise ConfigError(
            f"reactor_scope must be local (react to this node's events), all (imported "
            f"events too) or leader (one node reacts to all), not {config.reactor_scope!r}"
        )
    if config.reactor_watchdog < 0:
        raise ConfigError(
            f"reactor_watchdog must be 0 (off) or seconds, not {config.reactor_watchdog}"
        )
    if config.reactor_leader_ttl <= 0:
        raise ConfigError(f"reactor_leader_ttl must be positive, not {config.reactor_leader_ttl}")
    if not _REACTOR_NAME.match(config.reactor_name):
        raise ConfigError(
            f"reactor_name {config.reactor_name!r} must be 1-64 letters, digits, "
            "'.', '_' or '-', not starting with '.'"
        )


# -- federation ------------------------------------------------------------------

CLUSTER_KEYS: Final = frozenset(
    (
        "servers",
        "node_name",
        "export",
        "import",
        "stream",
        "replicas",
        "subject_prefix",
        "duplicate_window",
        "max_age",
        "max_bytes",
        "import_start",
        "max_in_flight",
        "export_batch",
        "ack_timeout",
        "credentials",
        "tls",
        "user",
        "password",
        "token",
        "nkeys_seed",
        "options",
    )
)


def cluster_section(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # from SALTBUS_CLUSTER: YAML or JSON
        value = yaml.safe_load(value) if value.strip() else {}
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"cluster must be a mapping (servers, node_name, ...), not {value!r}")
    unknown = sorted(str(k) for k in value if k not in CLUSTER_KEYS)
    if unknown:
        known = ", ".join(sorted(CLUSTER_KEYS))
        raise ConfigError(f"cluster: unknown keys {unknown}; known: {known}")
    return {str(k): v for k, v in value.items() if v is not None}
