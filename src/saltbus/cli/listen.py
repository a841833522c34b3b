"""``saltbus listen``: print events as they arrive, as ``salt-run state.event`` does."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from saltbus.cli.common import (
    add_bus_options,
    add_filter_options,
    add_journal_options,
    config_from_args,
    journal_file,
    positive_int,
    to_json,
)
from saltbus.client.listener import Listener
from saltbus.client.positions import PositionStore
from saltbus.errors import NoPublisherError
from saltbus.event import Event

HELP = "print events from a bus as they arrive"
DESCRIPTION = """\
Print each event as it arrives. By default one line per event,
TAG<TAB>JSON, exactly as `salt-run state.event` prints; --pretty as
`state.event pretty=True`; --json one {"tag", "data"} object per line, for jq.

If no publisher runs yet, listen says so once on stderr and waits for one
(--no-wait: exit 1 instead), then prints the events fired once it is
connected. If the publisher goes away, listen waits for it and reconnects by
itself; from a saltbus publisher it then resumes from the journal, losing
nothing. With
--resume NAME the position is also kept on disk under NAME, so a listener
stopped (or killed) and started again with the same NAME continues where it
stopped. Ctrl-C exits 0.
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "listen",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filter_options(parser)
    parser.add_argument("--count", type=positive_int, metavar="N", help="exit after N events")
    parser.add_argument(
        "--resume", metavar="NAME", help="keep this listener's position under NAME and resume it"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="exit 1 at once if no publisher runs (default: wait for one to start)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--pretty", action="store_true", help="indented JSON, sorted keys")
    output.add_argument("--json", action="store_true", help="one JSON object per line")
    add_bus_options(parser)
    add_journal_options(parser)
    parser.set_defaults(run=run)


def format_event(
    event: Event, *, pretty: bool = False, as_json: bool = False, with_seq: bool = False
) -> str:
    if as_json:
        record: dict[str, Any] = {"tag": event.tag, "data": event.data}
        if with_seq:
            record["seq"] = event.seq
        return json.dumps(record, default=str, ensure_ascii=False)
    return f"{event.tag}\t{to_json(event.data, pretty=pretty)}"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = config_from_args(args)
    positions = PositionStore(journal_file(config), args.resume) if args.resume else None
    saved = positions.load() if positions else None
    epoch, since = saved if saved else (None, None)
    listener = Listener(
        config, args.tag, args.match_type, since=since, epoch=epoch, name=args.resume
    )
    remaining = args.count
    try:
        _connect_or_wait(listener, wait=not args.no_wait)
        while remaining is None or remaining > 0:
            event = listener.receive(None)
            if event is None:
                continue
            print(format_event(event, pretty=args.pretty, as_json=args.json), file=out, flush=True)
            if positions is not None and event.seq is not None:
                positions.save(listener.session.epoch, event.seq)
            if remaining is not None:
                remaining -= 1
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    return 0


def _connect_or_wait(listener: Listener, *, wait: bool) -> None:
    """Connect now, or say once that the bus is not there yet and leave the
    connecting to ``receive``, which retries until a publisher starts."""
    try:
        listener.connect()
    except NoPublisherError as exc:
        if not wait:
            raise
        print(
            f"saltbus: waiting for the bus to start: {exc} (--no-wait exits instead)",
            file=sys.stderr,
            flush=True,
        )
