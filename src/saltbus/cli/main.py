"""``saltbus``: the entry point. Each command lives in its own module.

Every command's module is imported to build the parser, whichever command
runs; so a module imports at its top only what its options need, and what its
command runs on (the server, asyncio, the journal's SQLite, the extras) in the
function that runs it. ``saltbus fire`` then starts without the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from saltbus.cli import (
    completion,
    doctor,
    exporter,
    fire,
    health,
    history,
    http,
    journal,
    listen,
    logs,
    react,
    returners,
    serve,
    stats,
    token,
)
from saltbus.cli.common import config_from_args
from saltbus.config import Config
from saltbus.errors import ConfigError, SaltbusError

DESCRIPTION = """\
saltbus: a standalone event bus that speaks SaltStack's event protocol.
It serves Salt's own clients, and its clients and tools work against a real
Salt master's or minion's sock_dir.
"""
EPILOG = "Run `saltbus COMMAND --help` for a command's options."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saltbus",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    logs.add_options(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (
        serve,
        listen,
        fire,
        history,
        journal,
        stats,
        health,
        doctor,
        http,
        token,
        react,
        returners,
        completion,
        exporter,
    ):
        command.add_parser(commands)
    # Accepted after the command too (`saltbus serve --log-level debug`), where
    # they win over the same options given before it.
    logs.add_to_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(logs.settings(args, _config_for_logging(args)))
        return int(args.run(args))
    except ConfigError as exc:
        print(f"saltbus: error: {exc}", file=sys.stderr)
        return 2
    except SaltbusError as exc:
        print(f"saltbus: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _config_for_logging(args: argparse.Namespace) -> Config | None:
    """The configuration of a command that takes one (its log_* options), or
    None: a configuration with an error is the command's to report."""
    if not hasattr(args, "sock_dir"):
        return None
    try:
        return config_from_args(args)
    except ConfigError:
        return None


class _VersionAction(argparse.Action):
    """argparse's "version" action, with the version looked up only when asked:
    importlib.metadata takes longer to import than the rest of a command's start."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, help="show the version and exit"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        import saltbus  # noqa: PLC0415

        print(f"saltbus {saltbus.__version__}")
        parser.exit()


if __name__ == "__main__":
    sys.exit(main())
