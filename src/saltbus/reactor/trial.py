"""``saltbus react --test TAG [DATA]``: what the reactor would do for one
event, without doing it.

Every tag glob is tried; each matching reaction file is rendered for the
event as the running reactor would render it, and each of its reactions is
put through the same gates (scope, ``when:``, the loop guard). What would
run is shown with its arguments (for Salt's reactions: the client, target
and function); what would not says why. ``once_within`` depends on the
running reactor's window, which a trial cannot see: it is named, not judged;
so are ``lock`` (with the key rendered for the event) and ``concurrency``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from saltbus.config import Config
from saltbus.reactor.causes import cause_of, origin_node
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.rules import Rules
from saltbus.reactor.spec import Reaction
from saltbus.reactor.templates import compile_condition


def explain(config: Config, rules: Rules, tag: str, data: Mapping[str, Any]) -> Iterator[str]:
    """Lines saying, for each tag glob, reaction file and reaction, what the
    reactor would do with the event ``tag``/``data``."""
    yield f"event {tag} {json.dumps(dict(data), default=str, sort_keys=True)}"
    if config.reactor_scope == "leader":
        yield "(reactor_scope leader: only the node holding the lease runs what follows)"
    origin = origin_node(data)
    scope_skips = origin is not None and config.reactor_scope == "local"
    depth = cause_of(data).depth
    seen: set[Any] = set()
    for rule in rules.rules:
        if not rule.matcher(tag):
            yield f"{rule.pattern!r}: no match (tag {tag!r} does not match this glob)"
            continue
        yield f"{rule.pattern!r}: matches"
        for template in rule.templates:
            if template.path in seen:
                yield f"  {template.path}: already rendered for an earlier glob (runs once)"
                continue
            seen.add(template.path)
            yield f"  {template.path}:"
            try:
                reactions = template.render(tag, data)
            except ReactionFileError as exc:
                yield f"    render error: {exc}"
                continue
            if not reactions:
                yield "    (no reactions for this event)"
            for reaction in reactions:
                yield "    " + _verdict(reaction, tag, data, config, origin, scope_skips, depth)


def _verdict(
    reaction: Reaction,
    tag: str,
    data: Mapping[str, Any],
    config: Config,
    origin: str | None,
    scope_skips: bool,
    depth: int,
) -> str:
    head = f"{reaction.name} (line {reaction.line}): "
    if scope_skips:
        return (
            head + f"not run: imported from node {origin} (reactor_scope local: "
            "that node's reactor runs it)"
        )
    if reaction.when is not None:
        try:
            passed = bool(compile_condition(reaction.when)(tag, data))
        except Exception as exc:  # the running reactor reports this as a failed reaction
            return head + f"not run: when: {reaction.when} failed: {type(exc).__name__}: {exc}"
        if not passed:
            return head + f"not run: when: {reaction.when} is false"
    if depth >= config.reactor_max_depth:
        return (
            head + f"not run: the loop guard (the chain is {depth} reactions deep, "
            f"reactor_max_depth {config.reactor_max_depth})"
        )
    throttle = ""
    if reaction.once_within is not None:
        per = f" per {', '.join(reaction.group_by)}" if reaction.group_by else ""
        throttle = f" [unless it ran within the last {reaction.once_within:g} s{per}: once_within]"
    retry = f" [retry: {reaction.retry.describe()}]" if reaction.retry else ""
    return head + "WOULD RUN " + describe_action(reaction) + throttle + retry + gating(reaction)


def gating(reaction: Reaction) -> str:
    """`` [lock: KEY, concurrency: N]`` for a gated reaction, else empty."""
    parts = []
    if reaction.lock is not None:
        parts.append(f"lock: {reaction.lock} (one at a time per key, queued)")
    if reaction.concurrency is not None:
        parts.append(f"concurrency: {reaction.concurrency} (at most that many at once)")
    return f" [{', '.join(parts)}]" if parts else ""


def describe_action(reaction: Reaction) -> str:
    opts = dict(reaction.options)
    if reaction.client is None:
        return f"{reaction.function} {json.dumps(opts, default=str, sort_keys=True)}"
    call = _call(opts.pop("fun"), opts.pop("arg"), opts.pop("kwarg"))
    client = opts.pop("client")
    if client != "local":
        return f"{client} {call} on the Salt master"
    target = f"{opts.pop('tgt')!r} ({opts.pop('tgt_type')})"
    more = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()) if v not in (None, ""))
    return f"local {call} on minions {target}" + (f" [{more}]" if more else "")


def _call(fun: str, arg: list[Any], kwarg: Mapping[str, Any]) -> str:
    parts = [json.dumps(a, default=str) for a in arg]
    parts += [f"{k}={json.dumps(v, default=str)}" for k, v in kwarg.items()]
    return f"{fun}({', '.join(parts)})"
