"""How a command logs: level, format (text, or JSON lines for a log shipper) and
file, from the flags, else the config file (Salt's ``log_level`` and
``log_file``, and ``log_format``), else info as text on stderr.

A JSON line carries the time, level, logger and message, and the ``tag`` and
``seq`` of the event a record is about when the call passes them
(``log.info("...", extra={"tag": event.tag, "seq": event.seq})``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from saltbus.config import LOG_LEVELS, Config
from saltbus.errors import ConfigError

# Salt's levels as Python's: Salt's finer ones are debug here; quiet logs nothing.
PYTHON_LEVELS: Final = {
    "all": logging.DEBUG,
    "garbage": logging.DEBUG,
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "profile": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "quiet": logging.CRITICAL + 10,
}
TEXT_FORMAT: Final = "saltbus: %(levelname)s: %(message)s"
# journald stamps what it is given; a file needs its own times.
FILE_TEXT_FORMAT: Final = "%(asctime)s saltbus: %(levelname)s: %(message)s"
# What a JSON line takes from a record's extra= beyond the basics.
EVENT_FIELDS: Final = ("tag", "seq")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "text"
    file: Path | None = None


def add_options(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """``--log-level`` and ``--log-format``, before the command (the main parser)
    or after it (each command's: there the default is to leave what came before)."""
    group = parser.add_argument_group("logging")
    default = argparse.SUPPRESS if after_command else None
    group.add_argument(
        "--log-level",
        type=str.lower,
        default=default,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="log verbosity: debug, info, warning, error, critical or quiet (Salt's trace, "
        "garbage, all and profile are debug); default: the config file's log_level, else info",
    )
    group.add_argument(
        "--log-format",
        type=str.lower,
        default=default,
        choices=("text", "json"),
        help="text lines, or JSON objects (time, level, logger, message, and the event's tag "
        "and seq where there is one); default: the config file's log_format, else text",
    )


def add_to_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """:func:`add_options` after each command, and after each action of a command
    that has actions (`saltbus token create`)."""
    for parser in {id(p): p for p in commands.choices.values()}.values():
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if actions:
            for action in actions:
                add_to_commands(action)
        else:
            add_options(parser, after_command=True)


def settings(args: argparse.Namespace, config: Config | None) -> LogSettings:
    """The flags, else the config's values (flags win, as for every option)."""
    if config is None:
        return LogSettings(args.log_level or "info", args.log_format or "text")
    return LogSettings(
        args.log_level or config.log_level,
        args.log_format or config.log_format,
        config.log_file,
    )


def configure(wanted: LogSettings) -> None:
    """Set up the root logger, once per process (a second call leaves it as it is)."""
    if logging.getLogger().handlers:
        return
    handler: logging.Handler
    if wanted.file is None:
        handler = logging.StreamHandler(sys.stderr)
        text_format = TEXT_FORMAT
    else:
        from logging.handlers import WatchedFileHandler  # noqa: PLC0415

        try:
            # Reopened when logrotate moves the file away.
            handler = WatchedFileHandler(wanted.file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot open log_file {wanted.file}: {exc.strerror}; create its directory "
                "or give another log_file"
            ) from None
        text_format = FILE_TEXT_FORMAT
    handler.setFormatter(
        JsonFormatter() if wanted.format == "json" else logging.Formatter(text_format)
    )
    logging.basicConfig(level=PYTHON_LEVELS[wanted.level], handlers=[handler])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
