"""``saltbus listen``: print events as they arrive, as ``salt-run state.event`` does."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from saltbus.cli.common import add_bus_options, add_filter_options, config_from_args, to_json
from saltbus.client.listener import Listener
from saltbus.errors import BusClosedError, NoPublisherError
from saltbus.event import Event

HELP = "print events from a bus as they arrive"
DESCRIPTION = """\
Print each event as it arrives. By default one line per event,
TAG<TAB>JSON, exactly as `salt-run state.event` prints; --pretty as
`state.event pretty=True`; --json one {"tag", "data"} object per line, for jq.

If the publisher goes away, listen waits for it and reconnects by itself.
Ctrl-C exits 0.
"""
RECONNECT_INTERVAL = 0.2


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "listen",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filter_options(parser)
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--pretty", action="store_true", help="indented JSON, sorted keys")
    output.add_argument("--json", action="store_true", help="one JSON object per line")
    add_bus_options(parser)
    parser.set_defaults(run=run)


def format_event(event: Event, *, pretty: bool = False, as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"tag": event.tag, "data": event.data}, default=str, ensure_ascii=False)
    return f"{event.tag}\t{to_json(event.data, pretty=pretty)}"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = config_from_args(args)
    listener = Listener(config, args.tag, args.match_type)
    remaining = args.count
    try:
        listener.connect()
        while remaining is None or remaining > 0:
            try:
                event = listener.receive(None)
            except BusClosedError as exc:
                print(f"saltbus: {exc}; reconnecting", file=sys.stderr, flush=True)
                _reconnect(listener)
                continue
            if event is None:
                continue
            print(format_event(event, pretty=args.pretty, as_json=args.json), file=out, flush=True)
            if remaining is not None:
                remaining -= 1
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    return 0


def _reconnect(listener: Listener) -> None:
    while True:
        try:
            listener.connect()
        except NoPublisherError:
            time.sleep(RECONNECT_INTERVAL)
            continue
        print("saltbus: reconnected", file=sys.stderr, flush=True)
        return
