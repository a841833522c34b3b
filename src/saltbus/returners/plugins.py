"""Finding returners by name: Salt's ``event_return(events)`` interface.

A returner is any object (a module works too) with ``event_return(events)``,
called with a list of ``{"tag", "data", "seq", "time"}`` dicts (Salt passes
``{"tag", "data"}``; the other two keys are saltbus's). It returns normally
when the events are stored and raises when they are not: the runner then
retries the same events later. ``close()``, when present, is called once at
the end.

Names resolve first to saltbus's built-in returners, then to the entry
points of group ``saltbus.returners`` that installed packages declare::

    [project.entry-points."saltbus.returners"]
    myret = "mypackage.returner:MyReturner"

The entry point names a factory, called with the returner's options mapping
(``returner_options[name]`` in the config), or a module with ``event_return``.
A factory must not do I/O (connect lazily in ``event_return``): a database
that is down must not stop the bus from starting. A factory (or module) that
declares ``OPTIONS``, a sequence of :class:`saltbus.returners.Option`, has
them shown by ``saltbus returners NAME``; the runner then gives it
``master_id`` only when it declares that option.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Protocol, runtime_checkable

from saltbus.errors import ConfigError
from saltbus.returners.options import Option, options_of

ENTRY_POINT_GROUP: Final = "saltbus.returners"

# Built-ins, as "module:attribute", imported only when used: their optional
# dependencies (psycopg) stay optional.
BUILTINS: Final[Mapping[str, str]] = {
    "pgjsonb": "saltbus.returners.pgjsonb:PgJsonbReturner",
    "rawfile_json": "saltbus.returners.rawfile_json:RawfileJsonReturner",
    "redis_stream": "saltbus.returners.redis_stream:RedisStreamReturner",
    "mysql": "saltbus.returners.mysql:MysqlReturner",
    "syslog": "saltbus.returners.syslog:SyslogReturner",
    "mqtt": "saltbus.returners.mqtt:MqttReturner",
    "http": "saltbus.returners.http:HttpReturner",
}
_EXTRAS: Final[Mapping[str, str]] = {
    "pgjsonb": "postgres",
    "redis_stream": "sinks",
    "mysql": "sinks",
    "mqtt": "sinks",
}


@runtime_checkable
class Returner(Protocol):
    def event_return(self, events: list[dict[str, Any]]) -> None: ...


ReturnerFactory = Callable[[Mapping[str, Any]], Returner]


def entry_points(group: str = ENTRY_POINT_GROUP) -> Sequence[importlib.metadata.EntryPoint]:
    """The installed entry points of ``group`` (tests replace this function)."""
    return tuple(importlib.metadata.entry_points(group=group))


def available() -> list[str]:
    """Every returner name that resolves: built-ins and installed plugins."""
    return sorted({*BUILTINS, *(ep.name for ep in entry_points())})


def load_returner(
    name: str,
    options: Mapping[str, Any],
    factories: Mapping[str, ReturnerFactory] | None = None,
) -> Returner:
    """The returner called ``name``, made with ``options``. ``factories``
    (name → factory) are looked at before anything else. Raises ConfigError
    when the name resolves to nothing usable."""
    return make_returner(name, find_returner(name, factories), options)


def find_returner(name: str, factories: Mapping[str, ReturnerFactory] | None = None) -> object:
    """The factory (or module) the name ``name`` resolves to, not yet called:
    ``factories``, then the built-ins, then the entry points. ConfigError
    when there is none, or it cannot be imported."""
    if factories is not None and name in factories:
        return factories[name]
    if name in BUILTINS:
        return _import_builtin(name)
    return _load_entry_point(name)


def make_returner(name: str, target: object, options: Mapping[str, Any]) -> Returner:
    """The returner ``target`` (a factory or a module, from find_returner) makes
    with ``options``; ConfigError when it cannot."""
    if isinstance(target, ModuleType):
        returner: object = target
    elif callable(target):
        try:
            returner = target(options)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"returner {name!r} could not be created: {exc}") from exc
    else:
        raise ConfigError(f"returner {name!r} is a {type(target).__name__}, not a factory")
    if not callable(getattr(returner, "event_return", None)):
        raise ConfigError(f"returner {name!r} has no event_return(events) function")
    return returner  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ReturnerInfo:
    """What ``saltbus returners`` says of a returner: where it comes from,
    the first paragraph of its documentation, the options it declares (None:
    it declares none), and why it cannot be used when it cannot."""

    name: str
    origin: str
    summary: str
    options: tuple[Option, ...] | None
    problem: str | None = None


def describe(name: str) -> ReturnerInfo:
    """A returner's :class:`ReturnerInfo`, without making it (no I/O). Raises
    ConfigError only when no returner has that name."""
    if name in BUILTINS:
        origin = "built-in"
    else:
        found = [ep for ep in entry_points() if ep.name == name]
        if not found:
            _load_entry_point(name)  # raises, naming what there is
        dist = found[0].dist
        origin = f"plugin {found[0].value}" + (f" ({dist.name} {dist.version})" if dist else "")
    try:
        target = find_returner(name)
        options = options_of(target)
    except ConfigError as exc:
        return ReturnerInfo(name, origin, "", None, str(exc))
    return ReturnerInfo(name, origin, _summary(name, target), options)


def describe_all() -> list[ReturnerInfo]:
    """Every returner that resolves, by name."""
    return [describe(name) for name in available()]


def _summary(name: str, target: object) -> str:
    # A built-in's module docstring starts "``name``: what it does."; a
    # plugin's class (or module) docstring says it its own way.
    doc = None if name in BUILTINS else getattr(target, "__doc__", None)
    if not doc:
        module = (
            target
            if isinstance(target, ModuleType)
            else sys.modules.get(str(getattr(target, "__module__", "")))
        )
        doc = getattr(module, "__doc__", None)
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return paragraph.removeprefix(f"``{name}``: ").replace("``", "")


def close_returner(returner: Returner) -> None:
    close = getattr(returner, "close", None)
    if callable(close) and not isinstance(returner, ModuleType):
        close()


def _import_builtin(name: str) -> object:
    module_name, _, attribute = BUILTINS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"returner {name!r} needs {exc.name or 'a missing package'}: "
            f"pip install 'saltbus[{_EXTRAS.get(name, 'all')}]'"
        ) from exc
    return getattr(module, attribute)


def _load_entry_point(name: str) -> object:
    found = [ep for ep in entry_points() if ep.name == name]
    if not found:
        names = ", ".join(available()) or "none"
        raise ConfigError(
            f"no returner named {name!r} (available: {names}); plugins register "
            f"an entry point in group {ENTRY_POINT_GROUP!r}"
        )
    if len({ep.value for ep in found}) > 1:
        where = ", ".join(ep.value for ep in found)
        raise ConfigError(f"returner {name!r} is registered more than once: {where}")
    try:
        return found[0].load()
    except Exception as exc:
        raise ConfigError(f"returner {name!r} ({found[0].value}) cannot be loaded: {exc}") from exc
