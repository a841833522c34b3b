"""``saltbus fire``: fire one event."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from saltbus.cli.common import add_bus_options, config_from_args, seconds
from saltbus.cli.eventdata import parse_data
from saltbus.client.listener import Listener
from saltbus.client.sender import Sender
from saltbus.config import Config
from saltbus.errors import SaltbusError
from saltbus.event import Event

HELP = "fire an event onto a bus"
DESCRIPTION = """\
Fire one event with tag TAG. Each DATA word is one of:
  {...}       a JSON object
  -           a JSON object read from stdin, of any size up to max_event_size
              (a word on the command line is held to ~128 KiB)
  @FILE       a JSON object read from FILE, likewise
  key=value   one key; the value is JSON where it is JSON as written: true,
              false, null, a number that writes back as the same text (1, -3,
              2.5), or a value starting with " [ or { (then it must be valid
              JSON). Anything else is text: version=1.10 stays "1.10", as do
              1e3, 007 and web1. For text that looks like JSON, quote it:
              n='"1"'.
The words are combined; a key given twice is an error, not the last one
winning. NaN, Infinity, integers outside -2**63 .. 2**64-1 and lone surrogate
escapes (\\ud800) are refused: jq cannot read the first two back, and
msgpack cannot carry the others.
(Salt's event.send reads values as YAML, where 1.10 becomes 1.1 and no
becomes false: saltbus keeps what was written.) A `_stamp` is added as
Salt's clients add it.

examples:
  saltbus fire salt/auth '{"id": "web1", "act": "accept"}'
  saltbus fire app/deploy version=1.10 replicas=3 hosts='["a", "b"]'
  saltbus fire app/report @report.json host=web1
  build-report | saltbus fire app/report -
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
        "data",
        metavar="DATA",
        nargs="*",
        help="a JSON object, - (one from stdin), @FILE (one from FILE), key=value pairs",
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
    """Whether ``received`` is ``sent`` back through msgpack. DATA's rules keep
    out what would come back unequal (NaN, integers past 64 bits), so the
    data compare equal."""
    return received.tag == sent.tag and received.data == sent.data
