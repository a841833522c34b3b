"""``saltbus http``: serve a bus over HTTP (SSE, WebSocket, webhooks, a live page)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from saltbus.cli.common import add_bus_options, add_journal_options, config_from_args
from saltbus.errors import ConfigError
from saltbus.http.settings import DEFAULT_HOOK_PREFIX, SALT_HOOK_PREFIX, Settings

if TYPE_CHECKING:
    from saltbus.cli.notify import Notifier
    from saltbus.http.serving import BridgeServer
    from saltbus.http.tokens import TokenStore

log = logging.getLogger("saltbus.http")

# On shutdown the bridge ends its streams itself; a request still running
# after this many seconds is cancelled.
SHUTDOWN_TIMEOUT: Final = 5

HELP = "serve a bus over HTTP: SSE, WebSocket, webhooks and a live page"
DESCRIPTION = f"""\
Serve the bus over HTTP (Starlette on uvicorn):

  GET  /              a live page: the last 100 events, then live ones (token
                      in the URL: /#token=SECRET)
  GET  /events        Server-Sent Events: id = sequence number, event = tag,
                      data = {{"tag", "data"}}; ?tag=&match_type= filter on the
                      server; Last-Event-ID (or ?last_event_id=) resumes from
                      the journal with no gap; ?backlog=N starts with the last
                      N events from the journal; ?format=salt for salt-api's form
  POST /events        fire {{"tag", "data"}}; answers the event's sequence number
  GET  /ws            a WebSocket: the same stream, and {{"tag", "data"}} fires
  POST /hook/PATH     fire {DEFAULT_HOOK_PREFIX}/PATH with {{"body", "post", "headers"}}
                      as salt-api's /hook (--hook-prefix {SALT_HOOK_PREFIX} for
                      reactor files written for salt-api); answers its sequence number
  GET  /openapi.json  the API's OpenAPI document

Every request needs a token from --tokens FILE (`saltbus token create`), in an
`Authorization: Bearer` header or, for EventSource, WebSocket and hooks, a
?token= parameter; a token reads and fires only the tags its patterns allow.
Without --tokens, saltbus http refuses to start unless --no-auth is given,
and then serves on loopback only. Tokens in URLs are hidden in the log.

?backlog= reads the journal as `saltbus history` does: give the publisher's
--data-dir if it has one.

examples:
  saltbus token create me --fire '*' --tokens ~/.config/saltbus/tokens.json
  saltbus http --tokens ~/.config/saltbus/tokens.json
  sudo saltbus http --sock-dir /var/run/salt/master --tokens /etc/saltbus/tokens.json \\
      --bind 0.0.0.0 --tls-cert cert.pem --tls-key key.pem --hook-prefix {SALT_HOOK_PREFIX}
  curl -N -H "Authorization: Bearer $TOKEN" 'http://127.0.0.1:8000/events?tag=salt/job/'
"""


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "http",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve = parser.add_argument_group("serving")
    serve.add_argument("--bind", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)"
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS: certificate")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="serve HTTPS: private key")
    serve.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log each request and WebSocket (when logged, ?token= values are hidden)",
    )
    auth = parser.add_argument_group("authentication")
    choice = auth.add_mutually_exclusive_group()
    choice.add_argument(
        "--tokens", type=Path, metavar="FILE", help="the token file (`saltbus token create`)"
    )
    choice.add_argument(
        "--no-auth",
        action="store_true",
        help="no tokens: anyone who can connect may read and fire every event; "
        "serves on loopback only",
    )
    hooks = parser.add_argument_group("webhooks")
    hooks.add_argument(
        "--hook-prefix",
        default=DEFAULT_HOOK_PREFIX,
        help=f"tag prefix of hook events (default {DEFAULT_HOOK_PREFIX}; salt-api: "
        f"{SALT_HOOK_PREFIX})",
    )
    hooks.add_argument(
        "--hook-secrets",
        type=Path,
        metavar="FILE",
        help="YAML mapping of hook paths (fnmatch patterns) to HMAC secrets: those paths "
        "need a valid GitHub-style X-Hub-Signature-256 header instead of a token",
    )
    tuning = parser.add_argument_group("streams")
    tuning.add_argument(
        "--heartbeat",
        type=float,
        default=Settings.heartbeat,
        metavar="SECONDS",
        help=f"SSE comment on an idle stream every SECONDS (default {Settings.heartbeat:g})",
    )
    tuning.add_argument(
        "--queue-size",
        type=int,
        default=Settings.queue_size,
        metavar="N",
        help="events a slow client may have waiting before it is switched to catching up "
        f"from the journal (default {Settings.queue_size})",
    )
    add_bus_options(parser)
    add_journal_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tokens, bind = _auth(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        _check_tls(args.tls_cert, args.tls_key)
    if args.heartbeat <= 0 or args.queue_size <= 0:
        raise ConfigError("--heartbeat and --queue-size must be positive")
    config = config_from_args(args)
    settings = Settings(
        hook_prefix=args.hook_prefix,
        hook_secrets=_hook_secrets(args.hook_secrets) if args.hook_secrets else {},
        heartbeat=args.heartbeat,
        queue_size=args.queue_size,
    )
    try:
        # Here, not at the top: every saltbus command imports this module, and
        # only this one needs the http extra.
        import uvicorn  # noqa: PLC0415

        from saltbus.http.app import create_app  # noqa: PLC0415
        from saltbus.http.serving import access_log_filters  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"saltbus http needs the http extra (pip install 'saltbus[http]'): {exc}"
        ) from None
    from saltbus.cli.notify import Notifier  # noqa: PLC0415

    sock = _listen(bind, args.port)
    notifier = Notifier.from_env()
    try:
        host, port = sock.getsockname()[:2]
        scheme = "https" if args.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        print(
            f"saltbus http: serving the bus at {config.sock_dir} on {scheme}://{shown}:{port}/",
            file=sys.stderr,
            flush=True,
        )
        if tokens is None:
            print(
                "saltbus http: NO AUTHENTICATION (--no-auth): every local user may read and "
                "fire every event; listening on loopback only",
                file=sys.stderr,
                flush=True,
            )
        app = create_app(config, tokens=tokens, settings=settings)
        server = _notifying(notifier, f"serving HTTP on {scheme}://{shown}:{port}/")(
            uvicorn.Config(
                app,
                log_config=None,  # saltbus's logging, set up by main
                access_log=not args.no_access_log,
                ssl_certfile=args.tls_cert,
                ssl_keyfile=args.tls_key,
                timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
                server_header=False,
            ),
            app.state.bridge,
        )
        with access_log_filters(access_log=not args.no_access_log):
            server.run(sockets=[sock])
    finally:
        sock.close()
        notifier.close()
    return 0


def _notifying(notifier: Notifier, status: str) -> type[BridgeServer]:
    """The bridge's server telling the service manager (systemd) when it serves
    and stops, with the watchdog's keep-alives from uvicorn's event loop between."""
    import asyncio  # noqa: PLC0415

    from saltbus.http.serving import BridgeServer  # noqa: PLC0415

    class NotifyingServer(BridgeServer):
        _keep_alive: asyncio.Future[None] | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            # Not started: the app's start-up failed, and uvicorn is exiting.
            if self.started:
                notifier.ready(status)
                self._keep_alive = asyncio.ensure_future(notifier.keep_alive())

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            notifier.stopping()
            if self._keep_alive is not None:
                self._keep_alive.cancel()
            await super().shutdown(sockets)

    return NotifyingServer


def _auth(args: argparse.Namespace) -> tuple[TokenStore | None, str]:
    if args.no_auth:
        bind = args.bind or "127.0.0.1"
        if not _loopback(bind):
            raise ConfigError(
                f"--no-auth serves on loopback only, not on {bind}; give --tokens FILE to "
                "serve other hosts"
            )
        return None, bind
    if args.tokens is None:
        raise ConfigError(
            "refusing to serve without authentication: give --tokens FILE (create one with "
            "`saltbus token create NAME --tokens FILE`), or --no-auth for loopback only"
        )
    from saltbus.http.tokens import TokenStore, insecure_mode  # noqa: PLC0415

    store = TokenStore.open(args.tokens)
    if insecure_mode(args.tokens):
        log.warning("%s can be read by other users; chmod 600 it", args.tokens)
    if not store.records():
        log.warning("%s holds no tokens: every request will be refused", args.tokens)
    return store, args.bind or "127.0.0.1"


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair now, for an error that names them rather than a traceback."""
    import ssl  # noqa: PLC0415

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use --tls-cert {cert} / --tls-key {key}: {exc}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hook_secrets(path: Path) -> dict[str, str]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read hook secrets {path}: {exc}") from None
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in document.items()
    ):
        raise ConfigError(f"{path} must map hook paths to non-empty secret strings")
    from saltbus.http.tokens import insecure_mode  # noqa: PLC0415

    if insecure_mode(path):
        log.warning("%s can be read by other users; chmod 600 it", path)
    return {key.strip("/"): value for key, value in document.items()}


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that the real port (of --port 0) is known."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --bind {host}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
