"""Reactions as Salt writes them, turned into checked :class:`Reaction` values.

A reaction file, once rendered and read as YAML, maps reaction names to one
action each, in Salt's shape::

    write_marker:                  # the reaction's name
      cmd.run:                     # the action
        - cmd: [sh, -c, "..."]     # arguments: a list of single-key mappings,
        - timeout: 10
      when: data['ok']             # saltbus's additions, beside the action
      once_within: 30s             # (or among its arguments)
      group_by: [host]
      retry: {attempts: 3}         # run again when it fails (see .retry)
      lock: "deploy-{{ data['service'] }}"   # one at a time per key (queued)
      concurrency: 2               # at most 2 of this reaction running

or Salt's newer form, ``- args: [...]`` (items that are single-key mappings
are keyword arguments, others positional). Salt's ``arg`` (a list) and
``kwarg`` (a mapping) are read too.

Salt's own reactions, ``local`` (and Salt's ``cmd`` alias of it),
``runner``, ``wheel`` and ``caller``, are read in Salt's argument forms by
:mod:`.saltcalls` and run through Salt by :mod:`.saltside` (the master's
config for the first three, the minion's for ``caller``). saltbus tells
``cmd`` apart by the target: ``cmd.run`` *without* ``tgt`` is saltbus's own
command action; ``cmd.run`` with ``tgt`` and any other ``cmd.<fn>`` are Salt's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.retry import RetryPolicy, parse_retry
from saltbus.reactor.saltcalls import parse_salt_call, salt_client

MASTER_CLIENTS: Final = ("local", "runner", "wheel", "caller")
EXTRAS: Final = ("when", "once_within", "group_by", "retry", "lock", "concurrency")
DEFAULT_CMD_TIMEOUT: Final = 300.0
DEFAULT_HTTP_TIMEOUT: Final = 10.0
DEFAULT_HTTP_RETRIES: Final = 3
DEFAULT_HTTP_BACKOFF: Final = 0.5


@dataclass(frozen=True, slots=True)
class ActionSpec:
    positional: tuple[str, ...]
    required: frozenset[str]
    optional: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        return self.required | self.optional


ACTIONS: Final[Mapping[str, ActionSpec]] = {
    "cmd.run": ActionSpec(
        ("cmd",), frozenset({"cmd"}), frozenset({"shell", "cwd", "env", "timeout"})
    ),
    "event.send": ActionSpec(("tag", "data"), frozenset({"tag"}), frozenset({"data"})),
    "http.post": ActionSpec(
        ("url", "json"),
        frozenset({"url"}),
        frozenset({"json", "headers", "timeout", "retries", "backoff"}),
    ),
    "python": ActionSpec(("function",), frozenset({"function"}), frozenset({"kwargs"})),
}
SALTBUS_ACTIONS: Final = ", ".join(ACTIONS)
# Makes the exception to raise for a message (naming the file, line and reaction).
Fail = Callable[[str], Exception]


@dataclass(frozen=True, slots=True)
class Reaction:
    """One named action of a reaction file, with its arguments by name."""

    name: str
    path: Path
    line: int
    function: str
    options: Mapping[str, Any] = field(default_factory=dict)
    when: str | None = None
    once_within: float | None = None
    group_by: tuple[str, ...] = ()
    # The Salt client that runs it (local, runner, wheel), or None: saltbus's own.
    client: str | None = None
    retry: RetryPolicy | None = None
    # Rendered from the event with the rest of the file: reactions whose lock
    # is the same text run one at a time (see .concurrency).
    lock: str | None = None
    concurrency: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def parse_reactions(
    doc: Any, path: Path, lines: Mapping[str, int], *, strict: bool = True
) -> tuple[Reaction, ...]:
    """The reactions of one rendered reaction file.

    ``lines`` gives the line of each top-level name. With ``strict`` off (a
    trial render without an event) only the shape and the argument names are
    checked, not values that the event's data would have filled in.
    """
    if doc is None:
        return ()
    if not isinstance(doc, Mapping):
        raise ReactionFileError(
            path, 1, f"a reaction file maps reaction names to actions, not a {type(doc).__name__}"
        )
    reactions = []
    for key, body in doc.items():
        name = str(key)
        line = lines.get(name, 1)
        if name in ("include", "extend"):
            raise ReactionFileError(path, line, f"{name!r} is not supported in reaction files")
        reactions.append(_parse_reaction(name, body, path, line, strict))
    return tuple(reactions)


def _parse_reaction(name: str, body: Any, path: Path, line: int, strict: bool) -> Reaction:
    def fail(message: str) -> Exception:
        return ReactionFileError(path, line, f"reaction {name!r}: {message}")

    if isinstance(body, str):  # Salt's short form: `name: runner.cache.clear_grains`
        body = {body: None}
    if not isinstance(body, Mapping):
        raise fail(f"must map one action to its arguments, not {type(body).__name__}")
    extras = {k: v for k, v in body.items() if k in EXTRAS}
    functions = [k for k in body if k not in EXTRAS]
    if len(functions) != 1:
        found = ", ".join(map(str, functions)) or "none"
        raise fail(f"must name exactly one action (found: {found})")
    function = str(functions[0])
    value = body[functions[0]]
    if salt_client(function, _has_target(value)) is not None:
        salt_options, salt_extras = parse_salt_call(function, value, EXTRAS, fail, strict=strict)
        for extra, extra_value in salt_extras.items():
            if extra in extras:
                raise fail(f"{extra} is given twice")
            extras[extra] = extra_value
        when, once_within, group_by = _extras(extras, fail)
        return Reaction(
            name,
            path,
            line,
            function,
            salt_options,
            when,
            once_within,
            group_by,
            client=str(salt_options["client"]),
            retry=parse_retry(extras.get("retry"), fail, parse_duration),
            **_gating(extras, fail),
        )
    try:
        positional, kwargs = _arguments(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    spec = ACTIONS.get(function)
    if spec is None:
        raise fail(
            f"unknown action {function!r}; saltbus runs {SALTBUS_ACTIONS}, and Salt's "
            "local, runner and wheel (and cmd) reactions through a Salt master"
        )
    for extra in EXTRAS:
        if extra in kwargs:
            if extra in extras:
                raise fail(f"{extra} is given twice")
            extras[extra] = kwargs.pop(extra)
    options = _bind(spec, positional, kwargs, fail)
    if strict:
        missing = sorted(spec.required - options.keys())
        if missing:
            raise fail(f"{function} needs {', '.join(missing)}")
        options = _check_options(function, options, fail)
    when, once_within, group_by = _extras(extras, fail)
    retry = parse_retry(extras.get("retry"), fail, parse_duration)
    return Reaction(
        name,
        path,
        line,
        function,
        options,
        when,
        once_within,
        group_by,
        retry=retry,
        **_gating(extras, fail),
    )


def _arguments(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """Salt's argument forms, as positional values and keyword arguments."""
    if value is None:
        return [], {}
    if isinstance(value, Mapping):
        items: list[Any] = [{k: v} for k, v in value.items()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"arguments must be a list of `- name: value` items, not {value!r}")
    positional: list[Any] = []
    kwargs: dict[str, Any] = {}

    def keyword(key: Any, val: Any) -> None:
        if str(key) in kwargs:
            raise ValueError(f"argument {key!r} is given twice")
        kwargs[str(key)] = val

    for item in items:
        if isinstance(item, Mapping) and len(item) != 1:
            raise ValueError(f"each argument is a single `- name: value` mapping, not {item!r}")
        if not isinstance(item, Mapping):
            positional.append(item)
            continue
        key, val = next(iter(item.items()))
        if key == "args" and isinstance(val, list):  # Salt's newer form
            for sub in val:
                if isinstance(sub, Mapping) and len(sub) == 1:
                    keyword(*next(iter(sub.items())))
                else:
                    positional.append(sub)
        elif key == "arg" and isinstance(val, list):
            positional.extend(val)
        elif key == "kwarg" and isinstance(val, Mapping):
            for k, v in val.items():
                keyword(k, v)
        else:
            keyword(key, val)
    return positional, kwargs


def _has_target(value: Any) -> bool:
    """Whether Salt's argument items include ``tgt`` (cmd.run is then Salt's)."""
    if isinstance(value, Mapping):
        return "tgt" in value
    if isinstance(value, list):
        return any(isinstance(i, Mapping) and "tgt" in i for i in value)
    return False


def _bind(
    spec: ActionSpec, positional: list[Any], kwargs: dict[str, Any], fail: Fail
) -> dict[str, Any]:
    unknown = sorted(kwargs.keys() - spec.names)
    if unknown:
        known = ", ".join(sorted(spec.names))
        raise fail(f"unknown argument {', '.join(unknown)} (this action takes {known})")
    if len(positional) > len(spec.positional):
        raise fail(f"too many positional arguments: {positional!r}")
    options = dict(kwargs)
    for pname, value in zip(spec.positional, positional, strict=False):
        if pname in options:
            raise fail(f"argument {pname} is given twice")
        options[pname] = value
    return options


def _check_options(function: str, options: dict[str, Any], fail: Fail) -> dict[str, Any]:
    """Types and defaults of the arguments of saltbus's own actions."""
    out = dict(options)
    if function == "cmd.run":
        cmd = out["cmd"]
        if isinstance(cmd, list | tuple):
            if not cmd or not all(isinstance(p, str | int | float) for p in cmd):
                raise fail(f"cmd must be a non-empty list of strings, not {cmd!r}")
            # As written: YAML reads `true` as a boolean, whose str() is "True".
            out["cmd"] = [str(p).lower() if isinstance(p, bool) else str(p) for p in cmd]
        elif not isinstance(cmd, str) or not cmd.strip():
            raise fail(f"cmd must be a list of strings (or one string), not {cmd!r}")
        out["shell"] = _bool(out.get("shell", False), "shell", fail)
        if out.get("cwd") is not None and not isinstance(out["cwd"], str):
            raise fail(f"cwd must be a path, not {out['cwd']!r}")
        env = out.get("env") or {}
        if not isinstance(env, Mapping):
            raise fail(f"env must map names to values, not {env!r}")
        out["env"] = {str(k): "" if v is None else str(v) for k, v in env.items()}
        out["timeout"] = _seconds(out.get("timeout", DEFAULT_CMD_TIMEOUT), "timeout", fail)
    elif function == "event.send":
        if not isinstance(out["tag"], str) or not out["tag"]:
            raise fail(f"tag must be a non-empty string, not {out['tag']!r}")
        out["data"] = {} if out.get("data") is None else out["data"]
        if not isinstance(out["data"], Mapping):
            raise fail(f"data must be a mapping, not {out['data']!r}")
    elif function == "http.post":
        url = out["url"]
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            raise fail(f"url must be an http:// or https:// URL, not {url!r}")
        headers = out.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise fail(f"headers must map names to values, not {headers!r}")
        out["headers"] = {str(k): str(v) for k, v in headers.items()}
        out["timeout"] = _seconds(out.get("timeout", DEFAULT_HTTP_TIMEOUT), "timeout", fail)
        out["backoff"] = _seconds(out.get("backoff", DEFAULT_HTTP_BACKOFF), "backoff", fail)
        retries = out.get("retries", DEFAULT_HTTP_RETRIES)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise fail(f"retries must be 0 or more, not {retries!r}")
        out["retries"] = retries
    elif function == "python":
        target = out["function"]
        if not isinstance(target, str) or not re.match(r"^[\w.]+:[\w.]+$", target):
            raise fail(f"function must be 'package.module:function', not {target!r}")
        kwargs = out.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise fail(f"kwargs must be a mapping, not {kwargs!r}")
        out["kwargs"] = dict(kwargs)
    return out


def _extras(
    extras: Mapping[str, Any], fail: Fail
) -> tuple[str | None, float | None, tuple[str, ...]]:
    when = extras.get("when")
    if isinstance(when, bool):
        when = str(when)
    if when is not None and (not isinstance(when, str) or not when.strip()):
        raise fail(f"when must be a Jinja2 expression, not {when!r}")
    once_within = None
    if extras.get("once_within") is not None:
        once_within = parse_duration(extras["once_within"], fail)
    group_by = extras.get("group_by") or ()
    if isinstance(group_by, str):
        group_by = (group_by,)
    if not isinstance(group_by, list | tuple) or not all(isinstance(g, str) for g in group_by):
        raise fail(f"group_by must be a list of data keys, not {group_by!r}")
    if group_by and once_within is None:
        raise fail("group_by needs once_within")
    return when, once_within, tuple(group_by)


def _gating(extras: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """``lock`` (any scalar, as text) and ``concurrency`` (a positive integer)."""
    lock = extras.get("lock")
    if lock is not None:
        if isinstance(lock, Mapping | list | bool) or not str(lock).strip():
            raise fail(f"lock must be a non-empty text (a template of the event), not {lock!r}")
        lock = str(lock)
    concurrency = extras.get("concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise fail(f"concurrency must be a whole number of 1 or more, not {concurrency!r}")
    return {"lock": lock, "concurrency": concurrency}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any, fail: Fail = ValueError) -> float:
    """Seconds from a number, or a string such as ``500ms``, ``30s``, ``5m``, ``1h``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise fail(f"{value!r} is not a positive duration (e.g. 30, 500ms, 30s, 5m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _seconds(value: Any, name: str, fail: Fail) -> float:
    # 0 (or null) means no limit.
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail(f"{name} must be a number of seconds, not {value!r}")
    if value in (0, "0"):
        return 0.0
    return parse_duration(value, lambda message: fail(f"{name}: {message}"))


def _bool(value: Any, name: str, fail: Fail) -> bool:
    if isinstance(value, bool):
        return value
    raise fail(f"{name} must be true or false, not {value!r}")
