"""The modes of ``saltbus react`` that do one thing and exit instead of running
the reactor: ``--check`` (list the configuration, reach Salt), ``--test`` /
``--test-seq`` (what would run for an event, running nothing) and
``--refire`` (fire a journal's event again; ``saltbus history --refire`` too)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saltbus.cli import react_rules
from saltbus.config import Config
from saltbus.errors import ConfigError

if TYPE_CHECKING:
    from saltbus.reactor import Rules

REFIRED_KEY = "_saltbus_refired"
ORIGIN_KEY = "_saltbus_origin"  # saltbus.cluster's marker of an imported event


def print_check(config: Config, rules: Rules) -> None:
    """--check: the rules, what each reaction is, and how Salt is reached
    (ConfigError when it cannot be)."""
    _print_rules(rules)
    for line in react_rules.describe_rules(rules):
        print(line)
    if config.reactor_missing_returns:
        print(
            "missed returns: on (saltbus/job/<jid>/missing "
            f"{config.reactor_missing_returns_timeout:g} s after a job, "
            f"at most {config.reactor_missing_returns_max_jobs} jobs open)"
        )
    clients = {reaction.client for reaction in rules.found if reaction.client}
    for line in _check_salt(config, clients):
        print(line)


def print_trial(config: Config, rules: Rules, args: argparse.Namespace) -> None:
    """--test TAG [DATA] / --test-seq N: what would run, and why the rest would not."""
    from saltbus.reactor.trial import explain  # noqa: PLC0415

    tag, data = _trial_event(config, args)
    for line in explain(config, rules, tag, data):
        print(line)


def refire(config: Config, seq: int) -> str:
    """Fire the journal's event ``seq`` again, as an event of this node: its
    data gets ``_saltbus_refired: {seq, stamp[, origin]}``. `saltbus react
    --refire` and `saltbus history --refire` both run this."""
    from saltbus import Sender  # noqa: PLC0415

    tag, data = _journal_event(config, seq)
    refired: dict[str, Any] = {"seq": seq, "stamp": data.pop("_stamp", None)}
    origin = data.pop(ORIGIN_KEY, None)
    if origin is not None:
        refired["origin"] = origin
    data[REFIRED_KEY] = refired
    with Sender(config) as sender:
        event = sender.fire(tag, data, timeout=10.0, ack=True)
    return f"saltbus: fired {tag} (seq {seq}) again as seq {event.seq}"


def _trial_event(config: Config, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The event of --test TAG DATA, or of --test-seq N from the journal."""
    if args.test is not None:
        from saltbus.cli.eventdata import parse_data  # noqa: PLC0415

        return args.test, parse_data(args.data)
    return _journal_event(config, args.test_seq)


def _journal_event(config: Config, seq: int) -> tuple[str, dict[str, Any]]:
    from saltbus.journal.store import Journal  # noqa: PLC0415
    from saltbus.reactor.progress import bus_journal  # noqa: PLC0415
    from saltbus.wire import unpack_body  # noqa: PLC0415

    path = bus_journal(config)
    if not path.exists():
        raise ConfigError(
            f"no journal at {path} for the bus in {config.sock_dir}: the event is read "
            "from it (give the bus's --sock-dir and --data-dir)"
        )
    with Journal.open(path, readonly=True) as journal:
        records = journal.read(since=seq - 1, until=seq, limit=1)
    if not records:
        raise ConfigError(f"no event with seq {seq} in {path}")
    tag, data = unpack_body(records[0].body)
    return tag, dict(data) if isinstance(data, dict) else {"data": data}


def _check_salt(config: Config, clients: set[str]) -> list[str]:
    """How Salt's reactions reach Salt; ConfigError (one line) when they cannot."""
    import asyncio  # noqa: PLC0415

    from saltbus.reactor.errors import SaltUnreachableError  # noqa: PLC0415
    from saltbus.reactor.saltapi import SaltApi  # noqa: PLC0415
    from saltbus.reactor.saltside import SaltLink  # noqa: PLC0415

    roles = ["master"] if clients - {"caller"} else []
    roles += ["minion"] if "caller" in clients else []

    async def check(role: str) -> str:
        if role == "master" and config.salt_api:
            api = SaltApi(config.salt_api)
            answer = await api.call({"op": "check"})
            if not answer.get("ok"):
                raise SaltUnreachableError(str(answer.get("error")))
            return f"Salt's reactions: through {api.describe()}, credentials accepted"
        link = SaltLink(config, role=role, announce=False)
        try:
            ready = await link.start()
            answer = await link.call({"op": "check"}, 60.0)
        finally:
            await link.close()
        if not answer.get("ok"):
            raise SaltUnreachableError(str(answer.get("error")))
        assert link.python is not None
        where = (
            f"master answering on {answer.get('master')}"
            if role == "master"
            else f"minion {answer.get('minion')}"
        )
        return (
            f"Salt's {'caller ' if role == 'minion' else ''}reactions: Salt "
            f"{ready.get('salt_version')} through {link.python.path} ({link.python.how}), "
            f"{role} config {link.salt_config}, {where}"
        )

    try:
        return [asyncio.run(check(role)) for role in roles]
    except SaltUnreachableError as exc:
        raise ConfigError(f"Salt's reactions cannot reach Salt: {exc}") from None


def _print_rules(rules: Rules) -> None:
    found: dict[Path, list[Any]] = {}
    for reaction in rules.found:
        found.setdefault(reaction.path, []).append(reaction)
    for rule in rules.rules:
        print(f"{rule.pattern!r}:")
        for template in rule.templates:
            print(f"  {template.path}")
            reactions = found.get(template.path)
            if reactions is None:
                print("    (rendered at each event: its reactions depend on the event's data)")
            for reaction in reactions or ():
                status = "ok"
                if reaction.client:
                    status = f"ok (Salt's {reaction.client} client, through the master)"
                extras = [
                    f"{name}: {value}"
                    for name, value in (
                        ("when", reaction.when),
                        ("once_within", reaction.once_within),
                        ("group_by", list(reaction.group_by) or None),
                        ("retry", reaction.retry.describe() if reaction.retry else None),
                        ("lock", reaction.lock),
                        ("concurrency", reaction.concurrency),
                    )
                    if value is not None
                ]
                more = f"  [{'; '.join(extras)}]" if extras else ""
                print(
                    f"    line {reaction.line}: {reaction.name}: {reaction.function} {status}{more}"
                )
