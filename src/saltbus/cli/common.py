"""Options every command that touches a bus shares, and turning them into a Config."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from saltbus.config import Config
from saltbus.event import MatchType
from saltbus.journal.paths import default_data_dir, journal_path
from saltbus.wire import GENERATIONS


def seconds(text: str) -> float:
    """An argparse type for a timeout: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for a count: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_bus_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "bus",
        "which bus to use; each option may also come from the config file or a "
        "SALTBUS_<OPTION> environment variable (flags win)",
    )
    group.add_argument(
        "--sock-dir",
        type=Path,
        help="directory of the bus's sockets (default: /var/run/salt/<node> as root, "
        "$XDG_RUNTIME_DIR/saltbus or /tmp/saltbus-<uid> otherwise)",
    )
    group.add_argument("--node", choices=("master", "minion"), help="master (default) or minion")
    group.add_argument("--id", help="the minion id, which names a minion's sockets")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML config file; Salt's own master/minion config files work",
    )
    group.add_argument(
        "--ipc-mode", choices=("ipc", "tcp"), help="unix sockets (default) or TCP on 127.0.0.1"
    )
    group.add_argument(
        "--salt-version",
        choices=tuple(GENERATIONS),
        help="the Salt generation whose framing to speak (default 3007; 3006 and 3008 "
        "put a length before each frame)",
    )


def add_journal_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("journal")
    group.add_argument(
        "--data-dir",
        type=Path,
        help="where journals are kept (default /var/lib/saltbus as root, else "
        "$XDG_DATA_HOME/saltbus)",
    )


def journal_file(config: Config) -> Path:
    """The journal file of the bus ``config`` names (it may not exist)."""
    data_dir = config.data_dir or default_data_dir()
    return journal_path(data_dir, config.sock_dir, config.socket_prefix)


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tag", default="", help="only events whose tag matches (default: all)")
    parser.add_argument(
        "--match-type",
        choices=[m.value for m in MatchType],
        help="how --tag is compared (default startswith, or event_match_type from the config)",
    )


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    overrides: dict[str, Any] = {
        "data_dir": getattr(args, "data_dir", None),
        "sock_dir": args.sock_dir,
        "node": args.node,
        "id": args.id,
        "ipc_mode": args.ipc_mode,
        "salt_version": args.salt_version,
    }
    overrides.update(extra)
    return Config.load(args.config, overrides=overrides)


def to_json(value: Any, *, pretty: bool = False) -> str:
    """JSON as Salt's ``state.event`` prints it: compact on one line, or sorted
    and indented by 4 with ``pretty``. Bytes are shown as text."""
    return json.dumps(
        value,
        sort_keys=pretty,
        indent=4 if pretty else None,
        default=_json_default,
        ensure_ascii=False,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)
