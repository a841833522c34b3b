"""``saltbus serve``: run the publisher in the foreground."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from saltbus.cli import cluster, react
from saltbus.cli.common import add_bus_options, add_journal_options, config_from_args
from saltbus.cli.journal import recover_command
from saltbus.config import Config
from saltbus.errors import ConfigError, SaltbusError

if TYPE_CHECKING:
    from saltbus.cli.notify import Notifier
    from saltbus.metrics.daemon import ServerMetrics
    from saltbus.reactor import Reactor
    from saltbus.server import Server

# Names under which `saltbus stats` shows what holds the journal's retention.
CLUSTER_HOLD = "cluster:export"
REACTOR_HOLD = "reactor"

HELP = "run the publisher daemon in the foreground (Ctrl-C or SIGTERM stops it)"
DESCRIPTION = """\
Run a bus: bind the publish and pull sockets in --sock-dir and forward every
event fired into the pull socket to every listener on the publish socket, in
arrival order. Salt's own clients (salt.utils.event) work against it.

The sock_dir is created 0700 when missing and the sockets are bound 0600, so
only this user can use the bus. A stale socket left by a dead publisher is
removed; a live publisher's sockets are never taken over.

With --metrics HOST:PORT it also serves Prometheus metrics on /metrics, and
/healthz and /readyz for health checks (`saltbus health` asks the same).

Ctrl-C (SIGINT) or SIGTERM stops it: listeners get what was already
published, the sockets are removed, and it exits 0.

It refuses to start (one line on stderr, exit 1) on a journal that is
damaged, empty, truncated or not a journal, naming the `saltbus journal
recover` command that rebuilds it; and on a sock_dir or data directory this
user cannot create or write to.
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bus_options(parser)
    add_journal_options(parser)
    cluster.add_options(parser)
    parser.add_argument(
        "--journal",
        choices=("none", "batch", "fsync"),
        help="durability of the journal: batch (default; appended to the journal's tail "
        "file, indexed in SQLite behind; survives a crash of the process), fsync (on disk "
        "before an event is delivered or acknowledged), none",
    )
    parser.add_argument(
        "--journal-on-error",
        choices=("block", "deliver"),
        help="while the journal cannot commit (disk full, read-only, I/O error): block "
        "(default) holds events until it can, so nothing is delivered unjournaled; deliver "
        "goes on delivering and tells resuming readers which seqs were never journaled",
    )
    access = parser.add_argument_group(
        "access",
        "by default only this user reaches the bus: sock_dir 0700, sockets 0600, and "
        "every connection's credentials checked",
    )
    access.add_argument(
        "--group",
        dest="sock_group",
        metavar="GROUP",
        help="also let this group use the bus (sock_dir 0750, sockets 0660)",
    )
    access.add_argument(
        "--allow-root",
        action="store_const",
        const=True,
        help="let root connect to a bus served by another user",
    )
    access.add_argument(
        "--tcp-allow-unauthenticated",
        action="store_const",
        const=True,
        help="in ipc_mode tcp, admit clients without the bus's secret (Salt's clients; any "
        "local user can then use the bus)",
    )
    parser.add_argument(
        "--metrics",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz on this address (port 0: any "
        "free port, printed at start; config metrics_listen; needs the metrics extra)",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=int,
        metavar="N",
        help="after writing events to listeners, keep polling N microseconds before "
        "sleeping, so that listeners get events sooner on a machine whose idle CPUs halt "
        "(default 100; at most 15%% of one CPU; 0: off; config busy_poll_us)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from saltbus.journal.damage import JournalDamagedError  # noqa: PLC0415

    config = cluster.apply_options(
        config_from_args(
            args,
            journal=args.journal,
            journal_on_error=args.journal_on_error,
            sock_group=args.sock_group,
            allow_root=args.allow_root,
            tcp_allow_unauthenticated=args.tcp_allow_unauthenticated,
            metrics_listen=args.metrics_listen,
            busy_poll_us=args.busy_poll_us,
        ),
        args,
    )
    from saltbus.cli.notify import Notifier  # noqa: PLC0415

    try:
        with Notifier.from_env() as notifier:
            _event_loop_runner()(_serve(config, args, notifier))
    except JournalDamagedError as exc:
        # Named with this bus's options, so that the fix can be pasted as it is.
        raise exc.with_fix(recover_command(args, config)) from None
    except OSError as exc:
        if exc.filename is None:
            raise
        # A start-up step on a file or directory this user may not use (an
        # unwritable --data-dir, a read-only sock_dir): say which, in one line.
        raise SaltbusError(
            f"cannot serve: {exc.filename}: {exc.strerror}; check that this user can write "
            "to --sock-dir and --data-dir"
        ) from None
    return 0


async def _serve(
    config: Config, args: argparse.Namespace | None = None, notifier: Notifier | None = None
) -> None:
    from saltbus.cli.notify import Notifier, watchdog_task  # noqa: PLC0415
    from saltbus.server import Server  # noqa: PLC0415

    notifier = notifier or Notifier(None)

    server = Server(config)
    # With a `reactor:` section (and serve's own arguments, which it reloads
    # from), the reactor runs here as a client of this bus.
    reactor_args = args if config.reactor else None
    _hold_for_consumers(config, server, reactor_args is not None)
    notifier.status("starting")
    # Before startup: the journal is handed the commit-time histogram then,
    # and a malformed address is refused before anything is bound.
    metrics = _server_metrics(server) if config.metrics_listen else None
    endpoint = (
        metrics.endpoint(config.metrics_listen) if metrics and config.metrics_listen else None
    )
    await server.startup()
    if endpoint is not None:
        # Bound before the bus is announced: a taken port stops the start.
        try:
            await endpoint.start()
        except BaseException:
            await server.shutdown()
            raise
    server.install_signal_handlers()
    serving = _announce(config, server)
    reactor = bridge = None
    try:
        if metrics is not None and endpoint is not None:
            metrics.serving = True
            print(
                f"saltbus: metrics on {endpoint.url}/metrics (and /healthz, /readyz)",
                file=sys.stderr,
                flush=True,
            )
        if reactor_args is not None:
            reactor = await react.start_alongside(config, reactor_args, server)
            if config.reactor_catch_up:
                server.retention_holds.hold(REACTOR_HOLD, reactor.journal_position)
        # With a `cluster:` section (or --cluster), so does the federation bridge.
        if config.cluster:
            bridge = await cluster.start_alongside(config, server)
            server.retention_holds.hold(CLUSTER_HOLD, bridge.journal_position)
        _freeze_start_up_objects()
        # Ready once what the config asks for runs: a unit ordered after this
        # one finds the sockets bound, and the reactor and the bridge started.
        notifier.ready(serving)
        async with watchdog_task(notifier):
            await _until_exit_or_reactor_failure(server, reactor)
    finally:
        notifier.stopping(f"stopping at seq {server.intake.last_seq}")
        if metrics is not None:
            metrics.serving = False
        if endpoint is not None:
            await endpoint.close()
        if bridge is not None:
            await bridge.stop()
        if reactor is not None:
            await reactor.stop()
        await server.shutdown()
    print(f"saltbus: stopped at seq {server.intake.last_seq}", file=sys.stderr, flush=True)
    if reactor is not None:
        reactor.raise_if_failed()


def _freeze_start_up_objects() -> None:
    """Move what start-up made (modules, config, the server) out of the
    collector's view: a full collection then scans what events allocate, not
    the whole heap, which paused an event's delivery for milliseconds."""
    import gc  # noqa: PLC0415

    gc.collect()
    gc.freeze()


def _hold_for_consumers(config: Config, server: Server, reactor: bool) -> None:
    # The reactor's catch-up and the federation export read the journal from
    # their positions: it keeps what they have not taken from the start.
    if reactor and config.reactor_catch_up:
        server.retention_holds.hold(REACTOR_HOLD)
    if config.cluster:
        server.retention_holds.hold(CLUSTER_HOLD)


def _announce(config: Config, server: Server) -> str:
    """Say on stderr that the bus serves (the line tests and operators wait
    for); returns what it serves, for systemd's READY status."""
    where = config.sock_dir if config.ipc_mode == "ipc" else f"{server.pub_address}"
    journal = server.journal_path or "off"
    serving = f"serving the {config.node} bus in {where}"
    print(
        f"saltbus: {serving} (Salt {config.salt_version} framing; journal {journal}); "
        "Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    if config.ipc_mode == "tcp" and config.tcp_allow_unauthenticated:
        print(
            "saltbus: WARNING: tcp_allow_unauthenticated is set: any local user can read and "
            "fire events on this bus, as with Salt's own tcp mode",
            file=sys.stderr,
            flush=True,
        )
    return serving


def _server_metrics(server: Server) -> ServerMetrics:
    try:
        from saltbus.metrics.daemon import ServerMetrics  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"--metrics (metrics_listen) needs prometheus_client ({exc.name} is missing): "
            "pip install 'saltbus[metrics]'"
        ) from None
    return ServerMetrics(server)


async def _until_exit_or_reactor_failure(server: Server, reactor: Reactor | None) -> None:
    """Serve until asked to stop; a reactor that stopped by itself stops the
    daemon too (exit 1), rather than leave a bus whose reactions silently stopped."""
    import asyncio  # noqa: PLC0415

    waiters = {asyncio.ensure_future(server.wait_for_exit())}
    if reactor is not None:
        waiters.add(asyncio.ensure_future(reactor.wait_for_stop()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when it is installed (the `fast` extra), asyncio's loop otherwise."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        import asyncio  # noqa: PLC0415

        return asyncio.run
    return uvloop.run
