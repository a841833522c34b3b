"""``saltbus serve --cluster ...``: federation options, and the bridge run beside the bus."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from saltbus.config import Config
from saltbus.errors import ConfigError

if TYPE_CHECKING:
    from saltbus.cluster import Bridge, ClusterSettings
    from saltbus.server import Server


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "federation over NATS JetStream",
        "flags win over the config file's cluster: section (servers, node_name, export, "
        "import, stream, replicas, max_age, max_bytes, import_start, credentials, tls, ...)",
    )
    group.add_argument(
        "--cluster",
        metavar="URL[,URL...]",
        help="federate this bus through the NATS servers at these URLs (nats://HOST:PORT)",
    )
    group.add_argument(
        "--node-name", help="this node's name in the federation (default: --id, else the host)"
    )
    group.add_argument(
        "--export",
        action="append",
        metavar="PATTERN",
        help="export local events whose tag matches (startswith, or TYPE:PATTERN with TYPE "
        "endswith, find, regex or fnmatch); repeatable; default: all",
    )
    group.add_argument(
        "--import",
        dest="import_patterns",
        action="append",
        metavar="PATTERN",
        help="deliver here the other nodes' events whose tag matches; repeatable; default: all",
    )


def apply_options(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the flags folded into its cluster section, checked."""
    flags = {
        "servers": getattr(args, "cluster", None),
        "node_name": getattr(args, "node_name", None),
        "export": getattr(args, "export", None),
        "import": getattr(args, "import_patterns", None),
    }
    flags = {key: value for key, value in flags.items() if value}
    if flags:
        config = config.replace(cluster={**config.cluster, **flags})
    if config.cluster:
        _settings(config)  # a mistake is reported before the bus starts
    return config


async def start_alongside(config: Config, server: Server) -> Bridge:
    """Start the bridge of ``config`` in the running loop; ``saltbus stats`` shows it."""
    from saltbus.cluster import Bridge  # noqa: PLC0415

    # In the daemon's loop: imported events go straight to its intake, and
    # the export reads its journal, woken after each commit.
    bridge = Bridge(config, _settings(config), intake=server.intake)
    bridge.attach(server)
    await bridge.start()
    server.stats_sources["cluster"] = bridge.stats
    settings = bridge.settings
    print(
        f"saltbus: federating as node {settings.node_name!r} through "
        f"{','.join(settings.servers)} (stream {settings.stream})",
        file=sys.stderr,
        flush=True,
    )
    return bridge


def _settings(config: Config) -> ClusterSettings:
    try:
        from saltbus.cluster import ClusterSettings  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"federation needs nats-py ({exc}); install it: pip install 'saltbus[cluster]'"
        ) from None
    return ClusterSettings.from_config(config)


def describe(stats: dict[str, Any]) -> list[str]:
    """``saltbus stats`` lines for a bridge's statistics."""
    export, imported = stats.get("export", {}), stats.get("import", {})
    consumer = imported.get("consumer") or {}
    waiting = f", waiting for {stats['waiting_for']}" if stats.get("waiting_for") else ""
    lines = [
        f"cluster: node {stats.get('node')} {stats.get('state')} "
        f"{stats.get('connected') or '(not connected)'} stream {stats.get('stream')}{waiting}",
        f"  export {', '.join(export.get('patterns', []))}: exported {export.get('exported')}, "
        f"lag {export.get('lag')} (position {export.get('position')}), "
        f"in flight {export.get('in_flight')}, failures {export.get('failures')}",
        f"  import {', '.join(imported.get('patterns', []))}: imported {imported.get('imported')}, "
        f"duplicates dropped {imported.get('duplicates')}, filtered {imported.get('filtered')}, "
        f"consumer pending {consumer.get('pending', '?')} "
        f"(unacknowledged {consumer.get('ack_pending', '?')})",
    ]
    stream = stats.get("stream_state") or {}
    if stream:
        age, size = stream.get("max_age") or 0, stream.get("max_bytes") or -1
        kept_for = f"{age:g} s" if age else "forever"
        kept_size = f"{size} bytes" if size > 0 else "any size"
        lines.append(
            f"  stream {stream.get('messages')} messages, {stream.get('bytes')} bytes "
            f"(seqs {stream.get('first_seq')}-{stream.get('last_seq')}); "
            f"keeps {kept_for} and {kept_size}"
        )
    if stats.get("last_error"):
        lines.append(f"  last error: {stats['last_error']}")
    return lines
