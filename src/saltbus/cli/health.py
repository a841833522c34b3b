"""``saltbus health``: is the bus ready? Nagios-style, for monitoring and scripts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from saltbus.cli.common import add_bus_options, config_from_args, positive_int, seconds

HELP = "check a running publisher's readiness (Nagios exit codes: 0 OK, 1 WARNING, 2 CRITICAL)"
DESCRIPTION = """\
Ask the saltbus publisher serving --sock-dir for its statistics and judge
them as its /readyz does: its sockets answer, the journal commits, each
returner keeps up (a returner that is failing, or more than
--max-returner-lag events behind, is CRITICAL; over half of it, WARNING),
and the federation link is up when one is configured.

Prints one line, and exits as a Nagios plugin does: 0 OK, 1 WARNING,
2 CRITICAL (also: nothing serves the bus), 3 UNKNOWN (what serves it keeps no
statistics, e.g. Salt's own publisher, or it did not answer in time).
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "health",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="every check as JSON")
    parser.add_argument("--timeout", type=seconds, default=2.0, help="seconds to wait (default 2)")
    parser.add_argument(
        "--max-returner-lag",
        type=positive_int,
        metavar="EVENTS",
        help="returner lag that makes the bus not ready (default 10000; config "
        "metrics_max_returner_lag)",
    )
    add_bus_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.metrics.probe import readiness_of  # noqa: PLC0415

    out = out or sys.stdout
    config = config_from_args(args, metrics_max_returner_lag=args.max_returner_lag)
    result = readiness_of(config, args.timeout)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2), file=out)
    else:
        print(result.summary(), file=out)
    return int(result.status)
