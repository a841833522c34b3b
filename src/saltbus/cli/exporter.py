"""``saltbus exporter``: Salt's job metrics for Prometheus, from any bus."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from saltbus.cli.common import add_bus_options, config_from_args
from saltbus.config import Config
from saltbus.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:9108"
HELP = "serve Salt's job metrics (salt-exporter's names) read from a bus, for Prometheus"
DESCRIPTION = """\
Listen to the salt/job/ events of the bus in --sock-dir (a Salt master's own
bus too, in ipc or tcp mode, or a saltbus bus) and serve, on --metrics,
/metrics with Salt's job metrics under salt-exporter's names:

  salt_new_job_total{function,state}
  salt_expected_responses_total{function,state}
  salt_function_responses_total{function,state,success}
  salt_scheduled_job_return_total{function,state,minion,success}
  salt_responses_total{minion,success}
  salt_function_status{minion,function,state}  (1: the last return succeeded)

plus /healthz (200 while it runs) and /readyz (200 once subscribed to the
bus). It runs beside Salt or saltbus and needs neither `saltbus serve` nor
Salt's API. Ctrl-C or SIGTERM stops it.
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "exporter",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help=f"where to serve /metrics (default {DEFAULT_LISTEN}, or metrics_listen from the "
        "config; port 0: any free port, printed at start)",
    )
    parser.add_argument(
        "--drop-label",
        action="append",
        choices=("minion", "state"),
        default=[],
        help="leave this label out of every metric (repeatable): with many minions or "
        "states, fewer series",
    )
    parser.add_argument(
        "--status-function",
        action="append",
        metavar="FUNCTION",
        help="keep salt_function_status for this function (repeatable; default state.highstate)",
    )
    parser.add_argument(
        "--no-function-status",
        action="store_true",
        help="do not export salt_function_status at all",
    )
    add_bus_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    listen = args.metrics or config.metrics_listen or DEFAULT_LISTEN
    try:
        from saltbus.metrics.salt_jobs import (  # noqa: PLC0415
            DEFAULT_STATUS_FUNCTIONS,
            JobMetricsOptions,
        )
    except ImportError as exc:
        raise ConfigError(
            f"saltbus exporter needs prometheus_client ({exc.name} is missing): "
            "pip install 'saltbus[metrics]'"
        ) from None
    functions: tuple[str, ...] = (
        () if args.no_function_status else tuple(args.status_function or DEFAULT_STATUS_FUNCTIONS)
    )
    options = JobMetricsOptions(drop_labels=frozenset(args.drop_label), status_functions=functions)
    import asyncio  # noqa: PLC0415

    asyncio.run(_export(config, listen, options))
    return 0


async def _export(config: Config, listen: str, options: Any) -> None:
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from saltbus.cli.notify import Notifier, watchdog_task  # noqa: PLC0415
    from saltbus.metrics.exporter import JobExporter  # noqa: PLC0415

    exporter = JobExporter(config, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, exporter.stop)
    with Notifier.from_env() as notifier:
        async with exporter.endpoint(listen) as endpoint:
            exporting = f"exporting Salt's jobs on {config.pub_address} at {endpoint.url}/metrics"
            print(f"saltbus: {exporting}", file=sys.stderr, flush=True)
            # Ready once the metrics port is bound; the bus is reconnected to by itself.
            notifier.ready(exporting)
            async with watchdog_task(notifier):
                await exporter.run()
            notifier.stopping("stopping")
    print("saltbus: exporter stopped", file=sys.stderr, flush=True)
