"""``saltbus journal``: check, recover, list and prune the journal files."""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from saltbus.cli.common import (
    add_bus_options,
    add_journal_options,
    config_from_args,
    journal_file,
    to_json,
)
from saltbus.config import Config
from saltbus.errors import ConfigError, PublisherRunningError
from saltbus.journal.paths import default_data_dir

if TYPE_CHECKING:
    from saltbus.journal.inventory import JournalFile
    from saltbus.journal.salvage import Salvage
    from saltbus.journal.state_tables import StateSet

HELP = "check, recover, list and prune journal files"
DESCRIPTION = """\
Look after the journals a publisher keeps (one SQLite file per bus, in the
data directory).

  check    read every page and event of a bus's journal; exit 1 if damaged
  recover  salvage every readable event of a damaged journal into a fresh one
  list     every journal in the data directory: bus, size, seqs, last written
  prune    remove the journals of buses not served for a given time
"""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "journal",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)
    check = _subparser(
        actions,
        "check",
        "check a bus's journal for damage (exit 0 healthy, 1 damaged)",
        """\
Check the journal of the bus serving --sock-dir: its header, SQLite's
quick_check of every page, its meta and cursors, a read of every event, its
tail (<journal>.tail: the events not yet indexed into SQLite, and a last frame
cut short by a kill) and the reactor's state tables kept in the same file.
Prints one line per problem (or one line saying it is healthy), then what the
tail and the state tables hold, and exits 0 when healthy, 1 when damaged.
Safe while the publisher runs: it only reads.
""",
    )
    check.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    recover = _subparser(
        actions,
        "recover",
        "salvage a damaged journal's readable events into a fresh journal",
        """\
Rebuild the journal of the bus in --sock-dir from what is still readable:
every event outside the damaged pages and those its tail holds (up to a
damaged frame), the readers' cursors, the reactor's state tables that read
whole (the rules' windows, unfinished firings, open jobs; a set that does not
is left out, and its reactor starts it afresh) and the epoch (the publisher's
numbering, kept when the old file still says its last seq; otherwise a new
one, so that readers know old seqs mean nothing now). The damaged file and
its tail are kept aside as <name>.damaged-<UTC time>[.tail]. Prints how many
events were kept and lost, the seq ranges lost, and the state kept.

Refused while a publisher serves the bus: stop `saltbus serve` first. A
healthy journal is left alone unless --force.
""",
    )
    recover.add_argument(
        "--force", action="store_true", help="rebuild even a journal the check finds healthy"
    )
    listing = _subparser(
        actions,
        "list",
        "list the journals in the data directory",
        """\
List every journal in the data directory (--data-dir, or the default): the
bus it belongs to (its sock_dir, "unknown" for journals of older saltbus
versions until their daemon runs again), whether that bus is served now,
path, size on disk, first and last seq, and when it was last written.
""",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per journal")
    prune = _subparser(
        actions,
        "prune",
        "remove the journals of buses not served for a given time",
        """\
Remove the journals (with their WAL and readers' positions) not written for
--older-than, e.g. 30d, 12h, 2w. A dry run unless --yes: it prints what it
would remove. A journal whose bus is served now is never removed, nor one
whose bus is unknown (written by an older saltbus) unless --include-unknown.
""",
    )
    prune.add_argument(
        "--older-than",
        required=True,
        type=duration,
        metavar="DURATION",
        help="not written for this long: a number and s, m, h, d or w (e.g. 30d)",
    )
    prune.add_argument("--yes", action="store_true", help="remove them (default: only list)")
    prune.add_argument(
        "--include-unknown",
        action="store_true",
        help="also remove old journals whose bus is not recorded in them",
    )


def _subparser(actions: Any, name: str, help_text: str, description: str) -> Any:
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bus_options(parser)
    add_journal_options(parser)
    parser.set_defaults(run=_RUNNERS[name])
    return parser


def duration(text: str) -> float:
    """An argparse type for a duration: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (a number and s, m, h, d or w, e.g. 30d)"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def recover_command(args: argparse.Namespace, config: Config) -> str:
    """``saltbus journal recover`` with the options that name this bus."""
    words = ["saltbus", "journal", "recover", "--sock-dir", str(config.sock_dir)]
    for flag, value in (
        ("--data-dir", getattr(args, "data_dir", None)),
        ("--config", getattr(args, "config", None)),
    ):
        if value is not None:
            words += [flag, str(value)]
    if config.node != "master":
        words += ["--node", config.node]
        if config.id:
            words += ["--id", config.id]
    return shlex.join(words)


def _existing_journal(config: Config) -> Path:
    path = journal_file(config)
    if not path.exists():
        raise ConfigError(
            f"no journal at {path} for the bus in {config.sock_dir}; check --sock-dir "
            "and --data-dir (`saltbus journal list` shows the journals there)"
        )
    return path


# -- check ------------------------------------------------------------------------------


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = config_from_args(args)
    path = _existing_journal(config)
    salvage, readable = _examine(path)
    fix = recover_command(args, config)
    if args.json:
        print(to_json(_check_report(salvage, readable, fix)), file=out)
        return 0 if salvage.healthy else 1
    unindexed = salvage.unindexed()
    if salvage.healthy:
        last = unindexed[-1].seq if unindexed else salvage.last_seq
        print(f"journal {path} is healthy ({readable} events, last seq {last})", file=out)
    else:
        for problem in salvage.problems:
            print(f"journal {path} {problem}", file=out)
    for line in _tail_lines(salvage) + _state_lines(salvage):
        print(line, file=out)
    if not salvage.healthy:
        print(f"`{fix}` keeps what is readable and starts a fresh journal", file=out)
    return 0 if salvage.healthy else 1


def _tail_lines(salvage: Salvage) -> list[str]:
    tail = salvage.tail
    if tail is None:
        return []
    if not tail.records:
        held = "no events"
    else:
        unindexed = len(salvage.unindexed())
        held = (
            f"{len(tail.records)} events (seqs {tail.first_seq} to {tail.last_seq}), "
            f"{unindexed} of them not in SQLite yet"
        )
        if unindexed:
            held += " (the next `saltbus serve` indexes them; history shows them now)"
    if tail.torn:
        held += f"; a last frame cut short by a kill ({tail.torn} bytes), dropped at the next start"
    return [f"tail {tail.path}: {held}"]


def _state_lines(salvage: Salvage) -> list[str]:
    readable = [state.describe() for state in salvage.states or () if state.problem is None]
    return ["reactor state tables: " + "; ".join(readable)] if readable else []


def _examine(path: Path) -> tuple[Salvage, int]:
    """The check: what is wrong with ``path``, and how many events are readable
    (the tail's that SQLite lacks included)."""
    from saltbus.journal.salvage import connect_readonly, events, inspect  # noqa: PLC0415

    salvage = inspect(path)
    if not salvage.readable:
        return salvage, len(salvage.unindexed())
    conn = connect_readonly(path)
    try:
        readable = sum(1 for _ in events(conn, salvage))
    finally:
        conn.close()
    return salvage, readable + len(salvage.unindexed())


def _check_report(salvage: Salvage, readable: int, fix: str) -> dict[str, object]:
    tail = salvage.tail
    return {
        "path": str(salvage.path),
        "healthy": salvage.healthy,
        "problems": salvage.problems,
        "lost": [list(pair) for pair in salvage.lost.ranges],
        "readable_events": readable,
        "last_seq": salvage.last_seq,
        "epoch": salvage.epoch,
        "tail": None
        if tail is None
        else {
            "path": str(tail.path),
            "events": len(tail.records),
            "first_seq": tail.first_seq,
            "last_seq": tail.last_seq,
            "unindexed": len(salvage.unindexed()),
            "torn_bytes": tail.torn,
            "damaged_at": None if tail.damage is None else tail.damage.offset,
        },
        "state_tables": [
            {
                "set": state.label,
                "tables": [table.name for table in state.tables],
                "rows": state.rows,
                "problem": state.problem,
            }
            for state in salvage.states or ()
        ],
        "fix": None if salvage.healthy else fix,
    }


# -- recover ----------------------------------------------------------------------------


def run_recover(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.journal.recover import recover  # noqa: PLC0415
    from saltbus.server.sockets import BusLock  # noqa: PLC0415

    out = out or sys.stdout
    config = config_from_args(args)
    path = _existing_journal(config)
    lock = BusLock(config)
    if config.sock_dir.is_dir():
        try:
            lock.acquire()
        except PublisherRunningError:
            raise PublisherRunningError(
                f"a publisher is serving the bus in {config.sock_dir}; stop its `saltbus serve` "
                f"before recovering its journal {path}"
            ) from None
    try:
        if not args.force:
            salvage, readable = _examine(path)
            if salvage.healthy:
                print(
                    f"journal {path} is healthy ({readable} events); nothing to recover "
                    "(--force rebuilds it anyway)",
                    file=out,
                )
                return 0
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        done = recover(path, stamp)
    finally:
        lock.release()
    lost = "an unknown number" if done.lost is None else str(done.lost)
    ranges = done.salvage.lost.describe()
    print(
        f"recovered journal {path}: kept {done.kept} events"
        + (f" ({done.from_tail} from its tail)" if done.from_tail else "")
        + f", lost {lost}"
        + (f" (seqs {ranges})" if ranges else "")
        + f"; {done.cursors_kept} cursor(s) kept",
        file=out,
    )
    if done.states_kept or done.states_lost:
        print(_states_line(done.states_kept, done.states_lost), file=out)
    if done.epoch_kept:
        print("epoch kept: the seqs go on as before, readers' positions stay valid", file=out)
    else:
        print(
            "new epoch: the old numbering could not be read, readers holding a seq start over",
            file=out,
        )
    print(f"the damaged file is kept as {done.aside}", file=out)
    return 0


def _states_line(kept: list[StateSet], lost: list[StateSet]) -> str:
    line = "reactor state: " + (
        "kept " + "; ".join(state.describe() for state in kept) if kept else "none kept"
    )
    if lost:
        line += "; could not keep " + "; ".join(
            f"{state.label} ({state.problem})" for state in lost
        )
        line += ": its reactors start it afresh"
    return line


# -- list -------------------------------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    config = config_from_args(args)
    return config.data_dir or default_data_dir()


def _served(journal: JournalFile) -> bool | None:
    """Whether a publisher serves the journal's bus now (None: bus unknown)."""
    from saltbus.server.sockets import lock_is_held, lock_path  # noqa: PLC0415

    if journal.sock_dir is None:
        return None
    return lock_is_held(lock_path(journal.sock_dir, journal.socket_prefix))


def run_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.journal.inventory import describe, journal_files  # noqa: PLC0415

    out = out or sys.stdout
    data_dir = _data_dir(args)
    journals = [describe(path) for path in journal_files(data_dir)]
    if args.json:
        for journal in journals:
            print(to_json({**journal.to_dict(), "served": _served(journal)}), file=out)
        return 0
    if not journals:
        print(f"no journals in {data_dir}", file=out)
        return 0
    print("BUS (SOCK_DIR, PREFIX)\tSERVED\tSIZE\tFIRST\tLAST\tLAST WRITTEN (UTC)\tPATH", file=out)
    for journal in journals:
        served = _served(journal)
        print(
            "\t".join(
                [
                    f"{journal.sock_dir or 'unknown'} ({journal.socket_prefix})",
                    "?" if served is None else ("yes" if served else "no"),
                    _size(journal.size),
                    "-" if journal.first_seq is None else str(journal.first_seq),
                    "-" if journal.last_seq is None else str(journal.last_seq),
                    _when(journal.last_written),
                    str(journal.path)
                    + (" (unreadable: see `journal check`)" * bool(journal.problem)),
                ]
            ),
            file=out,
        )
    return 0


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- prune ------------------------------------------------------------------------------


def run_prune(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from saltbus.journal.inventory import describe, journal_files  # noqa: PLC0415

    out = out or sys.stdout
    data_dir = _data_dir(args)
    cutoff = time.time() - args.older_than
    verb = "removed" if args.yes else "would remove"
    chosen = 0
    for path in journal_files(data_dir):
        journal = describe(path)
        if journal.last_written >= cutoff:
            continue
        if journal.sock_dir is None and not args.include_unknown:
            print(f"kept {path}: its bus is unknown (--include-unknown removes it)", file=out)
            continue
        if not _prune_one(journal, remove=args.yes):
            print(f"kept {path}: its bus in {journal.sock_dir} is being served", file=out)
            continue
        chosen += 1
        print(f"{verb} {path} (last written {_when(journal.last_written)} UTC)", file=out)
    if not args.yes and chosen:
        print(f"dry run: --yes removes the {chosen} journal(s) above", file=out)
    elif not chosen:
        print(f"nothing to remove in {data_dir}", file=out)
    return 0


def _prune_one(journal: JournalFile, *, remove: bool) -> bool:
    """Remove ``journal`` (when ``remove``) unless its bus is served; False if it is.
    The bus's lock is held meanwhile, so that its publisher cannot start halfway."""
    from saltbus.journal.inventory import side_paths  # noqa: PLC0415
    from saltbus.server.sockets import BusLock, lock_path  # noqa: PLC0415

    lock = None
    if journal.sock_dir is not None:
        lock_file = lock_path(journal.sock_dir, journal.socket_prefix)
        if lock_file.exists():
            lock = BusLock(lock_file)
            try:
                lock.acquire()
            except (PublisherRunningError, ConfigError):
                return False
    try:
        if remove:
            for each in (journal.path, *side_paths(journal.path)):
                if each.is_dir():
                    shutil.rmtree(each)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        each.unlink()
    finally:
        if lock is not None:
            lock.release()
    return True


_RUNNERS = {"check": run_check, "recover": run_recover, "list": run_list, "prune": run_prune}
