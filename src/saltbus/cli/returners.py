"""``saltbus returners [NAME]``: the returners there are, and a returner's options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from saltbus.returners import Option, ReturnerInfo

HELP = "list the returners (event_return sinks) there are, or one's options"
DESCRIPTION = """\
Without NAME: every returner `event_return` can name, built in or added by
an installed package (an entry point in group saltbus.returners), with what
it does, and why it cannot be used when it cannot (a missing extra, say).

With NAME: that returner's options, as the returner itself declares them:
name, type, default, meaning, and the key of Salt's own returner for the same
thing where Salt has one. Give them under returner_options: {NAME: {...}} in
the config (or as Salt's keys). A plugin that declares no options is said to.
"""
EPILOG = """\
examples:
  saltbus returners
  saltbus returners mysql
  saltbus returners syslog --json
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "returners",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="a returner's name")
    parser.add_argument("--json", action="store_true", help="as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    # Finding plugins imports importlib.metadata, and describing a built-in
    # imports it (and its client library): only for this command.
    from saltbus.errors import ConfigError  # noqa: PLC0415
    from saltbus.returners import describe, describe_all  # noqa: PLC0415

    out = out or sys.stdout
    if args.name is None:
        infos = describe_all()
        if args.json:
            print(json.dumps([_as_dict(info) for info in infos], indent=2), file=out)
        else:
            _print_list(infos, out)
        return 0
    info = describe(args.name)
    if info.problem is not None:
        raise ConfigError(info.problem)
    if args.json:
        print(json.dumps(_as_dict(info), indent=2), file=out)
    else:
        _print_one(info, out)
    return 0


def _print_list(infos: list[ReturnerInfo], out: TextIO) -> None:
    width = max((len(info.name) for info in infos), default=0) + 2
    for info in infos:
        origin = "built-in" if info.origin == "built-in" else "plugin"
        print(f"{info.name:<{width}}{origin:<10}{info.summary}", file=out)
        if info.problem is not None:
            print(f"{'':<{width}}{'':<10}cannot be used: {info.problem}", file=out)
    print("\n`saltbus returners NAME` shows a returner's options.", file=out)


def _print_one(info: ReturnerInfo, out: TextIO) -> None:
    print(f"{info.name} ({info.origin}): {info.summary}", file=out)
    if info.options is None:
        print("It declares no options: see its own documentation.", file=out)
        return
    print(f"\nOptions, under returner_options: {{{info.name}: {{...}}}}:", file=out)
    width = max((len(option.name) for option in info.options), default=0) + 2
    for option in info.options:
        print(f"  {option.name:<{width}}{_facts(option)}", file=out)
        print(f"  {'':<{width}}{option.meaning}", file=out)


def _facts(option: Option) -> str:
    facts = [option.type]
    if option.default:
        facts.append(f"default {option.default}")
    if option.salt:
        facts.append(f"Salt: {option.salt}")
    if option.aliases:
        facts.append(f"also: {', '.join(option.aliases)}")
    return "; ".join(facts)


def _as_dict(info: ReturnerInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "origin": info.origin,
        "summary": info.summary,
        "problem": info.problem,
        "options": None
        if info.options is None
        else [
            {
                "name": o.name,
                "type": o.type,
                "default": o.default,
                "meaning": o.meaning,
                "salt": o.salt,
                "aliases": list(o.aliases),
            }
            for o in info.options
        ],
    }
