"""The DATA words of ``saltbus fire``: how the command line becomes an event's data.

The rules, chosen so that a user can tell from a word what it becomes:

- ``{...}`` is a JSON object; ``-`` is a JSON object read from stdin and
  ``@FILE`` one read from FILE: not held to the ~128 KiB a command-line word
  may have (max_event_size still applies).
- ``key=value``: the value is JSON where it is JSON *as written*: ``true``,
  ``false``, ``null``, a number whose JSON text writes back the same (``1``,
  ``-3``, ``2.5``), or a value starting with ``"``, ``[`` or ``{`` (which must
  then be valid JSON). Anything else is text: ``version=1.10`` stays
  ``"1.10"`` (1.1 would lose the zero), as do ``1e3``, ``007`` and ``web1``.
  Salt's ``event.send`` reads values as YAML instead, where 1.10 is 1.1 and
  ``no`` is false: a version or a country code silently changes.
- A key given twice, in two words or twice in one object, is an error rather
  than the last one silently winning.
- NaN and Infinity (not JSON: ``jq`` cannot read them back), integers
  msgpack cannot carry (outside -2**63 .. 2**64-1) and lone surrogate escapes
  (``"\\ud800"``, which UTF-8 cannot carry) are errors, wherever they are.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Final

from saltbus.errors import ConfigError
from saltbus.wire.body import UINT64_MAX

INT64_MIN: Final = -(2**63)
STDIN: Final = "-"
# NaN and Infinity parse as numbers in Python's json, and are not JSON.
_NOT_JSON_NUMBERS: Final = frozenset({"NaN", "Infinity", "-Infinity"})
_LITERALS: Final = frozenset({"true", "false", "null"})


def parse_data(items: Iterable[str], stdin: IO[str] | None = None) -> dict[str, Any]:
    """The event data the DATA words give; :class:`ConfigError` (one line,
    naming the word) for a word that breaks the rules. ``-`` reads ``stdin``
    (default: ``sys.stdin``)."""
    data: dict[str, Any] = {}
    read_stdin = False
    for item in items:
        if item == STDIN:
            if read_stdin:
                raise ConfigError("DATA names stdin (-) twice; it can be read once")
            read_stdin = True
            _merge(data, _object(_read_stdin(stdin), "stdin"), "stdin")
        elif item.startswith("@"):
            _merge(data, _object(_read_file(item[1:]), item), item)
        elif item.lstrip().startswith("{"):
            _merge(data, _object(item, "the JSON object DATA"), "the JSON object DATA")
        else:
            key, value = _pair(item)
            _merge(data, {key: value}, repr(item))
    return data


def _merge(data: dict[str, Any], more: dict[str, Any], source: str) -> None:
    for key, value in more.items():
        if key in data:
            raise ConfigError(
                f"DATA gives the key {key!r} twice (again in {source}); give each key once"
            )
        data[key] = value


def _read_stdin(stream: IO[str] | None) -> str:
    stream = sys.stdin if stream is None else stream
    try:
        return stream.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"stdin is not UTF-8 text: {exc}") from None


def _read_file(name: str) -> str:
    if not name:
        raise ConfigError("DATA '@' names no file; write @FILE, e.g. @event.json")
    try:
        return Path(name).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"DATA file {name} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read DATA file {name}: {exc.strerror or exc}") from None


def _object(text: str, source: str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError(f"{source} is empty; expected a JSON object")
    value = _loads(text, source)
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source} must be a JSON object ({{...}}), not a JSON {type(value).__name__}"
        )
    return value


def _pair(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        if item.lstrip().startswith(("[", '"')) or _is_json(item):
            raise ConfigError(f"DATA must be a JSON object or key=value pairs, not {item!r}")
        raise ConfigError(f"expected key=value, a JSON object, - or @FILE, got {item!r}")
    return key, _value(key, raw)


def _value(key: str, raw: str) -> Any:
    """A key=value word's value, by the rules in this module's docstring."""
    if raw in _LITERALS:
        return json.loads(raw)
    if raw in _NOT_JSON_NUMBERS:
        raise ConfigError(
            f"{key}={raw}: {raw} is not a JSON number (jq cannot read it back); "
            f"""for the text, quote it: {key}='"{raw}"'"""
        )
    if raw.startswith(('"', "[", "{")):
        hint = f" (a value starting with {raw[0]} is read as JSON; for text, write a JSON string)"
        return _loads(raw, f"the value of {key}", root=(key,), hint=hint)
    number = _number(raw)
    if number is None:
        return raw
    if isinstance(number, int) and not _carried(number):
        raise _int_error(f"{key}={raw}", key)
    return number


def _number(raw: str) -> int | float | None:
    """``raw`` as a JSON number when writing that number back gives ``raw``."""
    if not raw or raw[-1] not in "0123456789":
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None
    if type(value) not in (int, float) or json.dumps(value) != raw:
        return None
    return value  # type: ignore[no-any-return]


def _loads(text: str, source: str, *, root: tuple[str, ...] = (), hint: str = "") -> Any:
    """``text`` as JSON by the rules; ``root`` is where it sits in the data."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise ConfigError(f"{source} gives the key {key!r} twice; give each key once")
            obj[key] = value
        return obj

    try:
        value = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None
    _check_values(value, source, root)
    return value


def _check_values(value: Any, source: str, root: tuple[str, ...]) -> None:
    """Refuse NaN, Infinity (also from an overflowing 1e999), integers msgpack
    cannot carry and lone surrogates, naming where they are."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, root)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, dict):
            for key in item:
                if not _utf8(key):
                    raise _surrogate_error(source, f"a key in {_where(path)}", key)
            pending.extend((v, (*path, k)) for k, v in item.items())
        elif isinstance(item, str):
            if not _utf8(item):
                raise _surrogate_error(source, _where(path), item)
        elif isinstance(item, list):
            pending.extend((v, (*path, i)) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(
                f"{source}: {_where(path)} is {item}, which is not a JSON number "
                "(jq cannot read it back); give a finite number, or text in quotes"
            )
        elif isinstance(item, int) and not _carried(item):
            raise _int_error(source, _where(path))


def _utf8(text: str) -> bool:
    """Whether ``text`` is free of the lone surrogates a JSON \\ud800 escape
    gives, which UTF-8 (and so msgpack) cannot carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_error(source: str, where: str, text: str) -> ConfigError:
    return ConfigError(
        f"{source}: {where} ({text!r:.40}) holds a lone surrogate escape (\\ud800-\\udfff), "
        "which UTF-8 cannot carry; escape a whole surrogate pair or the character itself"
    )


def _carried(value: int) -> bool:
    return INT64_MIN <= value <= UINT64_MAX


def _int_error(source: str, where: str) -> ConfigError:
    return ConfigError(
        f"{source}: {where} is an integer msgpack cannot carry (it takes -2**63 to "
        "2**64-1); give it as text in quotes"
    )


def _where(path: tuple[str | int, ...]) -> str:
    return "data" + "".join(f"[{p!r}]" for p in path)


def _is_json(item: str) -> bool:
    try:
        json.loads(item)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True
