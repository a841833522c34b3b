"""Drive real Salt from one of the Salt virtual environments (see ``scripts/salt-venvs``).

This script is *executed* by a Salt venv's python, never imported by the test process
(which has no Salt). ``tests/interop/salt_peer_client.py`` wraps it for tests.

Subcommands::

    publisher --sock-dir D --node master|minion [--id ID]
    fire      --sock-dir D --node master|minion [--id ID] --tag T --data JSON [--count N]
    listen    --sock-dir D --node master|minion [--id ID] [--tag T] [--match-type M]
              [--count N] [--wait SECONDS] [--full]
    info

Protocol with the caller: ``publisher`` and ``listen`` print ``READY`` on stdout once they
are usable; ``fire`` prints ``{"result": ...}`` per event; ``listen`` prints
``{"tag": ..., "data": ...}`` per event, then exits 0, or prints ``TIMEOUT`` and exits 3
when a ``get_event`` returns None. JSON cannot carry bytes, so a msgpack bin value is
printed as ``{"__bytes__": "<hex>"}``. Salt logs to stderr at WARNING.

How Salt's own publisher is started differs by generation:

* 3006: ``salt.transport.ipc`` (tornado vendored as ``salt.ext.tornado``). A master runs
  ``salt.utils.event.EventPublisher(opts).run()``; a minion builds
  ``salt.utils.event.AsyncEventPublisher(opts, io_loop)`` and runs that loop.
* 3007/3008: ``server = salt.transport.ipc_publish_server(node, opts)`` then
  ``server.publish_daemon(server.publish_payload)`` blocks serving both sockets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time

# Imported first on purpose: Salt tweaks Python's logging when salt._logging loads.
import salt._logging
import salt.config
import salt.transport
import salt.utils.event
import salt.version

EXIT_TIMEOUT = 3
EXIT_NOT_READY = 4
# How long publisher/listen wait for their sockets before giving up on their own, so a
# broken setup never leaves a process hanging after the test helper gave up on it.
READY_DEADLINE = 60.0


def node_opts(node: str, sock_dir: str, node_id: str | None) -> dict:
    if node == "master":
        opts = salt.config.DEFAULT_MASTER_OPTS.copy()
    else:
        opts = salt.config.DEFAULT_MINION_OPTS.copy()
    if node_id is None:
        # Salt names a master "<host>_master"; any fixed name does for a test bus.
        node_id = "saltbus-harness_master" if node == "master" else "saltbus-harness-minion"
    opts.update(sock_dir=sock_dir, ipc_mode="ipc", id=node_id)
    return opts


def setup_salt_logging(opts: dict) -> None:
    """Route Salt's logging to stderr the way its daemons configure it, at WARNING.

    Going through Salt's options dict (rather than logging.basicConfig) matters: Salt
    installs a temporary buffering handler at import, and 3006's EventPublisher.run()
    tears logging down and rebuilds it from this dict.
    """
    log_opts = dict(opts)
    log_opts.update(
        log_level="warning",
        configure_file_logger=False,
        configure_ext_handlers=False,
    )
    salt._logging.set_logging_options_dict(log_opts)
    salt._logging.setup_logging()


def socket_paths(opts: dict, node: str) -> tuple[str, str]:
    """Pub and pull socket paths, computed independently of Salt to double-check it."""
    sock_dir = opts["sock_dir"]
    if node == "master":
        stem = "master_event"
    else:
        ident = opts.get("hash_id") or opts["id"]
        digest = getattr(hashlib, opts.get("hash_type") or "sha256")(ident.encode()).hexdigest()
        stem = f"minion_event_{digest[:10]}"
    return os.path.join(sock_dir, f"{stem}_pub.ipc"), os.path.join(sock_dir, f"{stem}_pull.ipc")


def accepts_connections(path: str) -> bool:
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def announce_when_ready(paths: tuple[str, ...]) -> None:
    """Print READY once every socket accepts connections (runs beside the serving loop)."""
    deadline = time.monotonic() + READY_DEADLINE
    while not all(accepts_connections(p) for p in paths):
        if time.monotonic() > deadline:
            print(
                f"salt_side_peer: sockets not ready after {READY_DEADLINE}s: {paths}",
                file=sys.stderr,
            )
            sys.stderr.flush()
            os._exit(EXIT_NOT_READY)
        time.sleep(0.05)
    print("READY", flush=True)


def _raise_exit(signum: int, frame: object) -> None:
    # Unwinds the blocking IO loop; Salt's 3007+ publish_daemon catches SystemExit and
    # closes its sockets on the way out.
    raise SystemExit(0)


def cmd_publisher(args: argparse.Namespace) -> int:
    opts = node_opts(args.node, args.sock_dir, args.id)
    setup_salt_logging(opts)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    threading.Thread(
        target=announce_when_ready, args=(socket_paths(opts, args.node),), daemon=True
    ).start()

    if hasattr(salt.transport, "ipc_publish_server"):
        # 3007 and 3008: the transport layer builds the IPC publisher for a node.
        server = salt.transport.ipc_publish_server(args.node, opts)
        try:
            server.publish_daemon(server.publish_payload)
        except SystemExit:
            server.close()
        return 0

    if args.node == "master":
        # 3006 master: the EventPublisher process body, run in this process. Its run()
        # installs Salt's own SIGTERM/SIGINT handlers, which close the sockets and
        # os._exit(0).
        salt.utils.event.EventPublisher(opts).run()
        return 0

    # 3006 minion: salt-minion builds AsyncEventPublisher on its own loop the same way.
    # Only 3006 vendors tornado as salt.ext.tornado, hence the late import.
    from salt.ext.tornado.ioloop import IOLoop  # noqa: PLC0415

    io_loop = IOLoop()
    io_loop.make_current()
    publisher = salt.utils.event.AsyncEventPublisher(opts, io_loop=io_loop)
    try:
        io_loop.start()
    except SystemExit:
        pass
    finally:
        publisher.close()
    return 0


def make_event(args: argparse.Namespace, listen: bool):
    opts = node_opts(args.node, args.sock_dir, args.id)
    setup_salt_logging(opts)
    if args.node == "master":
        return salt.utils.event.MasterEvent(args.sock_dir, opts=opts, listen=listen)
    return salt.utils.event.MinionEvent(opts, listen=listen)


def subscriber_connected(event) -> bool:
    """Whether the Salt event object holds a live connection to the publish socket.

    ``event.cpub`` is not enough: 3008 sets it even when its connect timed out.
    """
    sub = getattr(event, "subscriber", None)
    obj = getattr(sub, "obj", sub)  # the client inside Salt's SyncWrapper
    if obj is None:
        return False
    connected = getattr(obj, "connected", None)
    if callable(connected):  # 3006 IPCMessageSubscriber
        return bool(connected())
    return getattr(obj, "_stream", None) is not None  # 3007/3008 tcp PublishClient


def to_json(value: object) -> str:
    def default(obj: object) -> object:
        if isinstance(obj, (bytes, bytearray)):
            return {"__bytes__": bytes(obj).hex()}
        return repr(obj)

    return json.dumps(value, default=default, sort_keys=True)


def cmd_fire(args: argparse.Namespace) -> int:
    data = json.loads(args.data)
    if not isinstance(data, dict):
        print("salt_side_peer: --data must be a JSON object", file=sys.stderr)
        return 2
    event = make_event(args, listen=False)
    try:
        for i in range(1 if args.count is None else args.count):
            # fire_event adds _stamp to the dict it is given: use a fresh one each time.
            payload = dict(data) if args.count is None else dict(data, n=i)
            result = event.fire_event(payload, args.tag)
            print(to_json({"result": result}), flush=True)
    finally:
        event.destroy()
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    event = make_event(args, listen=True)
    try:
        # listen=True already connects in every generation; retry only if it did not,
        # so READY always means "subscribed" and no event fired after it is missed.
        deadline = time.monotonic() + READY_DEADLINE
        while not subscriber_connected(event):
            if time.monotonic() > deadline:
                print("salt_side_peer: could not connect to the publish socket", file=sys.stderr)
                return EXIT_NOT_READY
            if event.cpub:
                event.close_pub()
            event.connect_pub(timeout=1)
            if not subscriber_connected(event):
                time.sleep(0.1)
        print("READY", flush=True)

        printed = 0
        while args.count is None or printed < args.count:
            ret = event.get_event(
                wait=args.wait, tag=args.tag, match_type=args.match_type, full=True
            )
            if ret is None:
                print("TIMEOUT", flush=True)
                return EXIT_TIMEOUT
            out = ret if args.full else {"tag": ret["tag"], "data": ret["data"]}
            print(to_json(out), flush=True)
            printed += 1
        return 0
    finally:
        event.destroy()


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps({"salt_version": salt.version.__version__}), flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def node_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sock-dir", required=True)
        p.add_argument("--node", choices=("master", "minion"), default="master")
        p.add_argument("--id", default=None)

    node_args(sub.add_parser("publisher", help="serve Salt's IPC event publisher"))

    fire = sub.add_parser("fire", help="fire events with Salt's client")
    node_args(fire)
    fire.add_argument("--tag", required=True)
    fire.add_argument("--data", default="{}", help="JSON object")
    fire.add_argument(
        "--count", type=int, default=None, help='fire N events, adding "n": 0..N-1 to each'
    )

    listen = sub.add_parser("listen", help="print events received by Salt's client")
    node_args(listen)
    listen.add_argument("--tag", default="")
    listen.add_argument("--match-type", default=None)
    listen.add_argument("--count", type=int, default=None, help="stop after N events")
    listen.add_argument("--wait", type=float, default=10.0, help="get_event wait, seconds")
    listen.add_argument(
        "--full", action="store_true", help="print whatever get_event(full=True) returns"
    )

    sub.add_parser("info", help="print the Salt version")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = {
        "publisher": cmd_publisher,
        "fire": cmd_fire,
        "listen": cmd_listen,
        "info": cmd_info,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
