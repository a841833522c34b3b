"""A returner's options, declared once, in the returner's own module.

A returner (built in or a plugin) lists what it accepts as ``OPTIONS``, a
sequence of :class:`Option` on its factory or module. The factory refuses
names not there (:func:`check_known`), ``saltbus returners NAME`` prints them
and the tests check that the README and the code name the same options, so
the documentation cannot drift from what a returner reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saltbus.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its ``name`` in ``returner_options``, the ``type`` of its
    value as a reader would say it, its ``default`` as text (``""``: none),
    what it ``means``, ``salt``: the key of Salt's own returner for the same
    thing (``""`` when Salt has none), and other names it is accepted under."""

    name: str
    type: str
    default: str
    meaning: str
    salt: str = ""
    aliases: tuple[str, ...] = ()


def master_id() -> Option:
    """The option of the returners that store which bus an event came from:
    the runner gives them the bus's ``id`` unless the options set it."""
    return Option(
        "master_id", "string", "the bus's id, else the host name", "the bus, in what is stored"
    )


def accepted(options: Iterable[Option]) -> frozenset[str]:
    """Every name the options are accepted under (names and aliases)."""
    return frozenset(n for option in options for n in (option.name, *option.aliases))


def check_known(returner: str, given: Mapping[str, Any], options: Sequence[Option]) -> None:
    """ConfigError naming the options in ``given`` that ``options`` does not declare."""
    unknown = sorted(str(k) for k in given if k not in accepted(options))
    if unknown:
        known = ", ".join(sorted(o.name for o in options))
        raise ConfigError(f"{returner}: unknown options {unknown} (it takes: {known})")


def given(options: Mapping[str, Any], key: str, aliases: Mapping[str, str]) -> Any:
    """The value of ``key`` in ``options``, else of its alias (Salt's name for
    it, ``aliases[key]``); None when neither is set."""
    value = options.get(key)
    if value is None and key in aliases:
        value = options.get(aliases[key])
    return value


def options_of(target: object) -> tuple[Option, ...] | None:
    """The ``OPTIONS`` a returner's factory or module declares; None when it
    declares none (a plugin that predates them), ConfigError when they are
    not a sequence of Option."""
    declared = getattr(target, "OPTIONS", None)
    if declared is None:
        return None
    if isinstance(declared, str | bytes) or not isinstance(declared, Sequence):
        raise ConfigError(f"{_name(target)}.OPTIONS must be a sequence of Option")
    if not all(isinstance(option, Option) for option in declared):
        raise ConfigError(f"{_name(target)}.OPTIONS must hold saltbus.returners.Option items")
    return tuple(declared)


def _name(target: object) -> str:
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", target))
