"""Salt's own reactions (``local``, ``runner``, ``wheel``, and ``cmd`` as the
alias of ``local``) read in the argument forms of Salt's reactor docs.

``local`` takes the wrapper's arguments ``tgt`` (required), ``tgt_type`` (or
the old ``expr_form``; default glob), ``ret``, ``timeout`` and ``batch``; the
function's own arguments are ``arg`` (a list) and ``kwarg`` (a mapping), or
the newer ``- args:`` list of ``- name: value`` items (keyword arguments, as
Salt reads them; plain items are taken as positional ones)::

    highstate_new_minion:
      local.state.apply:
        - tgt: {{ data['id'] }}
        - args:
          - mods: base

``runner``, ``wheel`` and ``caller`` take ``arg``/``kwarg`` or ``- args:``
too (for ``caller``, Salt's older ``- args: [a, b]`` is positional), and, as
Salt's older form, any other item as a keyword argument of the function::

    accept_key:
      wheel.key.accept:
        - match: {{ data['id'] }}

Sans-I/O: this only turns what a reaction file says into the request
:mod:`.saltside` sends to Salt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

SALT_CLIENTS: Final = ("local", "runner", "wheel", "caller")
LOCAL_TAKES: Final = "tgt, tgt_type, arg, kwarg, args, ret, timeout, batch"
TARGET_TYPES: Final = frozenset(
    (
        "glob",
        "pcre",
        "list",
        "grain",
        "grain_pcre",
        "pillar",
        "pillar_pcre",
        "pillar_exact",
        "nodegroup",
        "range",
        "compound",
        "ipcidr",
    )
)

Fail = Callable[[str], Exception]


def salt_client(function: str, has_target: bool) -> str | None:
    """The Salt client of a reaction's action, or None when saltbus runs it
    itself: ``cmd.run`` without ``tgt`` is saltbus's command action."""
    kind = function.partition(".")[0]
    if kind in SALT_CLIENTS:
        return kind
    if kind == "cmd" and (function != "cmd.run" or has_target):
        return "local"
    return None


def parse_salt_call(
    function: str, value: Any, extras_names: tuple[str, ...], fail: Fail, *, strict: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, extras)`` of one Salt reaction: the request for
    :mod:`.saltside` (client, fun, arg, kwarg and the local client's
    options), and saltbus's own keys (``when`` ...) found among the items."""
    client = salt_client(function, True)
    assert client is not None
    fun = function.partition(".")[2]
    if not fun:
        raise fail(f"{function} names no function (e.g. {client}.test.ping)")
    top = _items(value, fail)
    extras = {name: top.pop(name) for name in extras_names if name in top}
    arg, kwarg = _function_arguments(top, fail)
    options: dict[str, Any] = {"client": client, "fun": fun}
    if client == "local":
        options.update(_local_options(top, strict, fail))
        unknown = sorted(top)
        if unknown:
            known = ", ".join(
                ("tgt", "tgt_type", "arg", "kwarg", "args", "ret", "timeout", "batch")
            )
            raise fail(f"unknown argument {', '.join(unknown)} (a local reaction takes {known})")
    else:
        # Salt's older form: the other items are the function's keyword arguments.
        for key, val in top.items():
            if key in kwarg:
                raise fail(f"argument {key} is given twice")
            kwarg[key] = val
    options["arg"] = arg
    options["kwarg"] = kwarg
    return options, extras


def _items(value: Any, fail: Fail) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if not isinstance(value, list):
        raise fail(f"arguments must be a list of `- name: value` items, not {value!r}")
    top: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, Mapping) or len(item) != 1:
            raise fail(f"each argument is a single `- name: value` mapping, not {item!r}")
        key, val = next(iter(item.items()))
        if str(key) in top:
            raise fail(f"argument {key} is given twice")
        top[str(key)] = val
    return top


def _function_arguments(top: dict[str, Any], fail: Fail) -> tuple[list[Any], dict[str, Any]]:
    if "args" in top:
        if "arg" in top or "kwarg" in top:
            # Salt ignores arg/kwarg beside args (with a warning): say so at load.
            raise fail("args is given with arg/kwarg; Salt would ignore those: keep one form")
        args = top.pop("args")
        if isinstance(args, Mapping):
            return [], {str(k): v for k, v in args.items()}
        if not isinstance(args, list):
            raise fail(f"args must be a list of `- name: value` items, not {args!r}")
        arg: list[Any] = []
        kwarg: dict[str, Any] = {}
        for item in args:
            if isinstance(item, Mapping) and len(item) == 1:
                key, val = next(iter(item.items()))
                if str(key) in kwarg:
                    raise fail(f"argument {key} is given twice")
                kwarg[str(key)] = val
            else:
                arg.append(item)
        return arg, kwarg
    arg_value = top.pop("arg", None)
    kwarg_value = top.pop("kwarg", None)
    if arg_value is None:
        arg = []
    elif isinstance(arg_value, list):
        arg = list(arg_value)
    else:
        arg = [arg_value]  # Salt's CLI takes a single argument as it is
    if kwarg_value is None:
        kwarg = {}
    elif isinstance(kwarg_value, Mapping):
        kwarg = {str(k): v for k, v in kwarg_value.items()}
    else:
        raise fail(f"kwarg must be a mapping of argument names to values, not {kwarg_value!r}")
    return arg, kwarg


def _local_options(top: dict[str, Any], strict: bool, fail: Fail) -> dict[str, Any]:
    options: dict[str, Any] = {}
    tgt = top.pop("tgt", None)
    if tgt is None and strict:
        raise fail("a local reaction needs tgt (the minions to run on)")
    if tgt is not None and not isinstance(tgt, str | list | int):
        raise fail(f"tgt must be a target string or a list of minion ids, not {tgt!r}")
    options["tgt"] = [str(t) for t in tgt] if isinstance(tgt, list) else tgt
    if isinstance(tgt, int):
        options["tgt"] = str(tgt)
    if "tgt_type" in top and "expr_form" in top:
        raise fail("tgt_type and expr_form (its old name) are both given")
    tgt_type = top.pop("tgt_type", top.pop("expr_form", "glob"))
    if tgt_type not in TARGET_TYPES and strict:
        raise fail(f"tgt_type {tgt_type!r} is not one of {', '.join(sorted(TARGET_TYPES))}")
    options["tgt_type"] = tgt_type
    ret = top.pop("ret", "")
    if isinstance(ret, list):
        ret = ",".join(map(str, ret))
    options["ret"] = "" if ret is None else str(ret)
    timeout = top.pop("timeout", None)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise fail(f"timeout must be a positive number of seconds, not {timeout!r}")
    options["timeout"] = timeout
    batch = top.pop("batch", None)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int | str)):
        raise fail(
            f"batch must be a number of minions or a percentage such as '10%', not {batch!r}"
        )
    options["batch"] = None if batch is None else str(batch)
    return options
