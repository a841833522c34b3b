"""``saltbus stats``: what a running saltbus publisher is doing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from saltbus.cli import cluster, react
from saltbus.cli.common import add_bus_options, config_from_args, seconds
from saltbus.client.admin import fetch_stats

HELP = "show a running publisher's subscribers, queues, drops and rate"
DESCRIPTION = """\
Ask the saltbus publisher serving --sock-dir for its statistics: events
received and the rate, the journal, and each subscriber with its queue depth
and how many events it dropped, and each returner with its lag behind the
journal and its failures. (Salt's own publisher keeps no statistics.)
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "stats",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="the raw statistics as JSON")
    parser.add_argument("--timeout", type=seconds, default=2.0, help="seconds to wait (default 2)")
    add_bus_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    stats = fetch_stats(config_from_args(args), args.timeout)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True), file=out)
        return 0
    print(
        f"bus: {stats['node']} in {stats['sock_dir']} (Salt {stats['salt_version']} framing)",
        file=out,
    )
    print(
        f"events: {stats['received']} received, last seq {stats['last_seq']}, "
        f"{stats['events_per_second']}/s over {stats['uptime']} s",
        file=out,
    )
    for line in _journal_lines(stats):
        print(line, file=out)
    holds = stats.get("journal_holds") or {}
    if holds:
        held = ", ".join(f"{name} at seq {seq}" for name, seq in sorted(holds.items()))
        print(f"  kept for: {held}", file=out)
    print(f"pull connections: {stats['pull_connections']}", file=out)
    subscribers = stats.get("subscribers", [])
    print(f"subscribers: {len(subscribers)}", file=out)
    for sub in subscribers:
        kind = "saltbus" if sub.get("resumable") else "salt"
        if sub.get("name"):
            kind = f"{kind} {sub['name']}"
        print(
            f"  {sub['peer']:24} {kind:8} delivered {sub['delivered']:>10}  "
            f"queued {sub['queued_events']:>7} ({sub['queued_bytes']} B)  dropped {sub['dropped']}",
            file=out,
        )
        if sub.get("patterns"):
            print(f"    filter: {' or '.join(sub['patterns'])}", file=out)
    returners = stats.get("returners", [])
    print(f"returners: {len(returners)}", file=out)
    for ret in returners:
        print(
            f"  {ret['name']:24} {ret['state']:8} returned {ret['returned']:>10}  "
            f"lag {ret['lag']:>7} (cursor {ret['cursor']})  failures {ret['failures']}",
            file=out,
        )
        details = ret.get("details") or {}
        if details:
            shown = ", ".join(f"{key} {value}" for key, value in sorted(details.items()))
            print(f"    {shown}", file=out)
        if ret.get("last_error") and ret.get("consecutive_failures"):
            print(f"    last error: {ret['last_error']} (retry in {ret['retry_in']} s)", file=out)
    if stats.get("cluster"):
        for line in cluster.describe(stats["cluster"]):
            print(line, file=out)
    if stats.get(react.STATS_KEY):
        for line in react.describe(stats[react.STATS_KEY]):
            print(line, file=out)
    return 0


def _journal_lines(stats: dict[str, Any]) -> list[str]:
    journal = stats.get("journal")
    if not journal:
        return ["journal: off"]
    lines = [f"journal: {journal} ({stats.get('journal_in_flight', 0)} in flight)"]
    failure = stats.get("journal_error")
    if failure:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failure["since"]))
        lines.append(
            f"  FAILING since {since} ({failure['reason']}): {failure['held']} events held, "
            "firing connections wait, acked fires are refused"
        )
        lines.append(f"  error: {failure['error']}")
    failures, refused = stats.get("journal_failures", 0), stats.get("journal_refused", 0)
    if failures or refused:
        lines.append(f"  failed commits: {failures}, acked fires refused: {refused}")
    return lines
