"""``saltbus history``: query a bus's journal, and optionally follow live events."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from saltbus.cli.common import (
    add_bus_options,
    add_filter_options,
    add_journal_options,
    config_from_args,
    journal_file,
)
from saltbus.cli.listen import format_event
from saltbus.client.listener import Listener
from saltbus.config import Config
from saltbus.errors import ConfigError, RemoteProtocolError
from saltbus.event import Event, MatchType
from saltbus.wire import unpack_body

if TYPE_CHECKING:
    from saltbus.journal.records import JournalRecord
    from saltbus.journal.store import Journal

HELP = "print events from a bus's journal (and, with --follow, live ones after them)"
DESCRIPTION = """\
Print journaled events of the bus serving --sock-dir, oldest first, in the
formats of `saltbus listen` (--json adds "seq"). The journal is read from the
data directory, whether the publisher runs or not, with its tail: the events
a publisher killed with -9 delivered before SQLite indexed them are printed
too (read only; the next `saltbus serve` indexes them). With --follow, history
then goes on with live events, with no gap and no duplicate at the seam.

A damaged journal's readable events are printed all the same; then one line
on stderr says which seqs could not be read, and the exit status is 1
(`saltbus journal recover` rebuilds the journal from what is readable).

`saltbus history --refire SEQ` fires the journal's event SEQ again, as an
event of this bus marked `_saltbus_refired: {seq, stamp, origin}`, so that
reactions it missed run (every matching reaction runs again); the same as
`saltbus react --refire SEQ`.

examples:
  saltbus history --tag salt/job/ --limit 20
  saltbus history --refire 1234     # fire event 1234 again, for the reactor
  saltbus history --after 2026-11-27T10:00 --until 2026-11-27T11:00 --json
  saltbus history --since 1200 --follow
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "history",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filter_options(parser)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since", type=int, metavar="SEQ", help="events after this sequence number")
    start.add_argument(
        "--after", metavar="ISO-TIME", help="events received at or after this time (UTC if no zone)"
    )
    parser.add_argument(
        "--until",
        metavar="SEQ|ISO-TIME",
        help="events up to this sequence number, or before this time",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="at most N events")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--pretty", action="store_true", help="indented JSON, sorted keys")
    output.add_argument("--json", action="store_true", help="one JSON object per line, with seq")
    parser.add_argument(
        "--follow", action="store_true", help="after the journal, go on with live events"
    )
    parser.add_argument(
        "--refire",
        type=int,
        metavar="SEQ",
        help="fire the journal's event SEQ again (marked _saltbus_refired), so missed "
        "reactions run, and exit (as `saltbus react --refire`)",
    )
    parser.add_argument(
        "--redact",
        action="store_true",
        help="replace values matched by the config's redact rules (the default rules: "
        "password, token, secret, private keys, AWS keys, when it has none)",
    )
    add_bus_options(parser)
    add_journal_options(parser)
    parser.set_defaults(run=run)


def parse_time(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-27T10:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _until(text: str | None) -> tuple[int | None, float | None]:
    if text is None:
        return None, None
    if text.isdigit():
        return int(text), None
    return None, parse_time(text)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.journal.damage import JournalDamagedError  # noqa: PLC0415

    config = config_from_args(args)
    if getattr(args, "refire", None) is not None:
        from saltbus.cli.react_oneshot import refire  # noqa: PLC0415

        print(refire(config, args.refire), file=out or sys.stdout)
        return 0
    if getattr(args, "redact", False):
        from saltbus.returners.redact import Redactor  # noqa: PLC0415

        args.redactor = Redactor(config.redact if config.redact is not None else {})
    try:
        return _run(args, config, out or sys.stdout)
    except JournalDamagedError as exc:
        from saltbus.cli.journal import recover_command  # noqa: PLC0415

        raise exc.with_fix(recover_command(args, config)) from None


def _run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import itertools  # noqa: PLC0415

    from saltbus.cli.journal import recover_command  # noqa: PLC0415
    from saltbus.journal.salvage import LostRanges, read_around  # noqa: PLC0415
    from saltbus.journal.store import Journal  # noqa: PLC0415
    from saltbus.journal.tailview import read_tail  # noqa: PLC0415

    path = journal_file(config)
    if not path.exists():
        raise ConfigError(
            f"no journal at {path} for the bus in {config.sock_dir}; has `saltbus serve` run "
            "there with its journal on (and the same --data-dir)?"
        )
    until_seq, before_time = _until(args.until)
    if args.follow and args.until is not None:
        raise ConfigError("--follow goes on with live events; it cannot take --until")
    match_type = MatchType.parse(args.match_type, config.event_match_type)
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be zero or more, not {args.limit}")
    after_time = parse_time(args.after) if args.after else None
    printed = 0
    # Seq ranges a damaged journal could not give: the events around them are
    # printed all the same, and the ranges are reported at the end.
    lost = LostRanges()
    # Read before SQLite's last seq (see saltbus.journal.tailview): the events
    # a killed publisher delivered but SQLite has not indexed yet.
    tail = read_tail(path)
    with Journal.open(path, readonly=True) as journal:
        epoch = journal.epoch()
        indexed = journal.last_seq()
        unindexed = tail.after(indexed) if tail is not None else []
        # The seam with live events: everything up to this snapshot comes from
        # the journal, everything after it from the publisher.
        snapshot = unindexed[-1].seq if unindexed else indexed
        end = snapshot if until_seq is None else min(until_seq, snapshot)
        every_event = not args.tag and after_time is None and before_time is None
        first = _first_seq(journal) if every_event else None

        def read(since: int, until: int, limit: int) -> list[JournalRecord]:
            return journal.read(
                since=since,
                until=until,
                limit=limit,
                tag=args.tag,
                match_type=match_type,
                after_time=after_time,
                before_time=before_time,
            )

        start = args.since or 0
        expected = None if first is None else max(first, start + 1)
        records = read_around(read, start, min(end, indexed), lost, first=expected)
        extra = _tail_records(unindexed, args, match_type, max(start, indexed), end)
        for record in itertools.islice(itertools.chain(records, extra), args.limit):
            event = _event(record)
            if event is not None:
                _print(event, args, out)
                printed += 1
    if lost:
        print(
            f"saltbus: error: journal {path} is damaged: events with seqs {lost.describe()} "
            f"cannot be read (the others were printed); `{recover_command(args, config)}` "
            "keeps what is readable and starts a fresh journal",
            file=sys.stderr,
            flush=True,
        )
    damage = tail.damage if tail is not None else None
    if damage is not None:
        fix = recover_command(args, config)
        print(f"saltbus: error: {damage.with_fix(fix)}", file=sys.stderr, flush=True)
    if args.follow and (args.limit is None or printed < args.limit):
        _follow(args, config, max(snapshot, args.since or 0), epoch, printed, out)
    return 1 if lost or damage is not None else 0


def _tail_records(
    records: list[JournalRecord],
    args: argparse.Namespace,
    match_type: MatchType,
    since: int,
    until: int,
) -> Iterator[JournalRecord]:
    """The tail's records SQLite lacks that the query asks for, filtered as
    :meth:`Journal.read` filters."""
    from saltbus.event import tag_matcher  # noqa: PLC0415

    matches = tag_matcher(args.tag, match_type) if args.tag else None
    after_time = parse_time(args.after) if args.after else None
    _seq, before_time = _until(args.until)
    for record in records:
        if not since < record.seq <= until:
            continue
        if matches is not None and not matches(record.tag):
            continue
        if after_time is not None and record.time < after_time:
            continue
        if before_time is not None and record.time >= before_time:
            continue
        yield record


def _first_seq(journal: Journal) -> int | None:
    """The oldest seq held, None when the pages that say it are damaged."""
    from saltbus.journal.damage import JournalDamagedError  # noqa: PLC0415

    try:
        return journal.first_seq()
    except JournalDamagedError:
        return None


def _follow(
    args: argparse.Namespace, config: Any, last: int, epoch: int | None, printed: int, out: TextIO
) -> int:
    listener = Listener(config, args.tag, args.match_type, since=last, epoch=epoch)
    try:
        while args.limit is None or printed < args.limit:
            event = listener.receive(None)
            if event is not None:
                _print(event, args, out)
                printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    return 0


def _event(record: JournalRecord) -> Event | None:
    try:
        tag, data = unpack_body(record.body)
    except RemoteProtocolError as exc:
        print(f"saltbus: skipping journaled event {record.seq}: {exc}", file=sys.stderr)
        return None
    return Event(tag, data, record.seq)


def _print(event: Event, args: argparse.Namespace, out: TextIO) -> None:
    redactor = getattr(args, "redactor", None)
    if redactor is not None:
        event = Event(event.tag, redactor.redact(event.data), event.seq)
    print(
        format_event(event, pretty=args.pretty, as_json=args.json, with_seq=True),
        file=out,
        flush=True,
    )
