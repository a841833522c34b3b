"""``saltbus fire``: fire one event."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from saltbus.cli.common import add_bus_options, config_from_args, seconds
from saltbus.client.listener import Listener
from saltbus.client.sender import Sender
from saltbus.config import Config
from saltbus.errors import ConfigError, SaltbusError
from saltbus.event import Event
from saltbus.wire import pack_data

HELP = "fire an event onto a bus"
DESCRIPTION = """\
Fire one event with tag TAG. DATA is a JSON object, or key=value pairs whose
values are read as JSON when they parse (so n=1 is a number and ok=true a
boolean) and as text otherwise; both forms may be combined. A `_stamp` is added
as Salt's clients add it.

examples:
  saltbus fire salt/auth '{"id": "web1", "act": "accept"}'
  saltbus fire app/deploy version=1.2 hosts='["a", "b"]'
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "fire",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tag", metavar="TAG", help="the event's tag, e.g. salt/auth")
    parser.add_argument(
        "data", metavar="DATA", nargs="*", help="a JSON object and/or key=value pairs"
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=1.0,
        help="seconds to wait for a publisher to take the event, and to see it published "
        "(default 1)",
    )
    parser.add_argument(
        "--ack",
        action="store_true",
        help="wait until the publisher has journaled the event, and print its sequence number",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check that the event comes out of the publish socket (by default "
        "fire listens for it, so an event a Salt publisher dropped because of a "
        "--salt-version mismatch is reported instead of lost silently)",
    )
    add_bus_options(parser)
    parser.set_defaults(run=run)


def parse_data(items: list[str]) -> dict[str, Any]:
    """A JSON object and/or key=value pairs, merged left to right."""
    data: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                value = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"DATA is not valid JSON: {exc}") from None
            data.update(value)
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key:
            if item.lstrip().startswith(("[", '"')) or _is_json_scalar(item):
                raise ConfigError(f"DATA must be a JSON object or key=value pairs, not {item!r}")
            raise ConfigError(f"expected key=value or a JSON object, got {item!r}")
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    return data


def _is_json_scalar(item: str) -> bool:
    try:
        json.loads(item)
    except json.JSONDecodeError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    data = parse_data(args.data)
    config = config_from_args(args)
    # An acknowledged event needs no check: the publisher said it has it.
    listener = None if args.no_verify or args.ack else _verifying_listener(config)
    try:
        with Sender(config) as sender:
            sent = sender.fire(args.tag, data, timeout=args.timeout, ack=args.ack)
        if args.ack:
            print(sent.seq, flush=True)
        if listener is not None and not _seen(listener, sent, args.timeout):
            print(
                f"saltbus: error: the event was sent but not seen on the publish socket within "
                f"{args.timeout} s; the publisher may speak another Salt generation's framing "
                f"than {config.salt_version} (run `saltbus doctor` to find out), or it "
                "dropped the event",
                file=sys.stderr,
            )
            return 1
    finally:
        if listener is not None:
            listener.close()
    return 0


def _verifying_listener(config: Config) -> Listener | None:
    """A listener on the publish socket, or None where this user cannot have one."""
    listener = Listener(config)
    try:
        listener.connect()
    except SaltbusError:
        return None
    return listener


def _seen(listener: Listener, sent: Event, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = listener.receive(remaining)
        except SaltbusError:
            return False
        if event is None:
            return False
        if _same_event(event, sent):
            return True
    return False


def _same_event(received: Event, sent: Event) -> bool:
    """Whether ``received`` is ``sent`` as it came back through msgpack, which
    carries some values differently (ints past 64 bits as strings, as Salt
    does) or as values that never equal themselves (NaN): compare the bytes."""
    if received.tag != sent.tag:
        return False
    return received.data == sent.data or pack_data(received.data) == pack_data(sent.data)
