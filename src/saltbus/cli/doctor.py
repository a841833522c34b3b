"""``saltbus doctor``: inspect a bus, saltbus's or Salt's, and say how to reach it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TextIO

from saltbus.cli.common import add_bus_options, config_from_args, seconds
from saltbus.wire import Framing

if TYPE_CHECKING:
    from saltbus.client.probe import ProbeReport, SocketReport

HELP = "inspect a bus: is a publisher there, can this user reach it, which Salt framing"
DESCRIPTION = """\
Inspect the bus in --sock-dir, whether saltbus or a Salt master or minion
serves it: the sockets' modes and owners, whether this user can connect, and
which Salt generation's framing the publisher speaks (3006 puts a length before
every frame, 3007 none, 3008 one on the pull socket only). To learn the
framing it fires one event tagged saltbus/doctor/probe in each framing and
watches which come back; --no-probe skips that. Prints the salt_version
setting to use. Exits 0 when a publisher was found and understood, 1 otherwise.
"""

FRAMING_NAMES = {Framing.BARE: "bare msgpack", Framing.LENGTH_PREFIXED: "4-byte length prefix"}


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "doctor",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-probe", action="store_true", help="do not fire probe events")
    parser.add_argument(
        "--timeout", type=seconds, default=1.0, help="seconds to wait for each probe (default 1)"
    )
    add_bus_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.client.probe import minion_buses, probe_bus  # noqa: PLC0415

    out = out or sys.stdout
    config = config_from_args(args)
    report = probe_bus(config, timeout=args.timeout, fire=not args.no_probe)
    print(f"bus: {config.node} in {config.sock_dir}", file=out)
    _print_socket("publish socket", report.pub, out)
    _print_socket("pull socket", report.pull, out)
    others = [m for m in minion_buses(config.sock_dir) if m != config.socket_prefix]
    if others:
        print(f"  minion buses here: {', '.join(others)} (use --node minion --id ID)", file=out)
    if not report.publisher_live:
        print("publisher: none reachable", file=out)
        return 1
    if args.no_probe:
        print("publisher: live (framing not probed)", file=out)
        return 0
    return _print_probe(report, config.salt_version, out)


def _print_socket(label: str, sock: SocketReport, out: TextIO) -> None:
    if not sock.exists:
        print(f"  {label:15} {sock.address}: {sock.error}", file=out)
        return
    mode = f"mode {sock.mode:04o} " if sock.mode is not None else ""
    owner = f"owner {sock.owner}:{sock.group} " if sock.owner is not None else ""
    reach = "reachable" if sock.accessible else f"NOT reachable: {sock.error}"
    print(f"  {label:15} {sock.address}  {mode}{owner}{reach}", file=out)


def _print_probe(report: ProbeReport, configured: str, out: TextIO) -> int:
    print(f"publisher: live ({report.publisher_kind or 'unknown kind'})", file=out)
    for note in report.notes:
        print(f"  note: {note}", file=out)
    if report.pub_framing is not None:
        print(f"  publishes: {FRAMING_NAMES[report.pub_framing]} frames", file=out)
        accepts = ", ".join(FRAMING_NAMES[f] for f in report.pull_accepts)
        print(f"  accepts:   {accepts}", file=out)
    generation = report.generation
    if generation is None:
        print("setting to use: unknown (no probe event came back)", file=out)
        return 1
    print(
        f"setting to use: --salt-version {generation}  "
        f"(config file: salt_version: {generation}; env: SALTBUS_SALT_VERSION={generation})",
        file=out,
    )
    if generation != configured:
        print(f"  the current setting, {configured}, does not match", file=out)
    return 0
