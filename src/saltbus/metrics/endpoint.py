"""``/metrics``, ``/healthz`` and ``/readyz`` on their own port, in the event loop.

In the loop rather than in prometheus_client's thread: the statistics a
scrape reads belong to the loop's objects, which are read where they change.
Three read-only paths and ``Connection: close`` are the whole of HTTP here;
the exposition itself is prometheus_client's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST

from saltbus.errors import ConfigError
from saltbus.metrics.health import Readiness

log = logging.getLogger("saltbus.metrics")

REQUEST_TIMEOUT: Final = 10.0
MAX_REQUEST_HEAD: Final = 16 * 1024
_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}

MetricsSource = Callable[[], Awaitable[bytes]]
ReadinessSource = Callable[[], Awaitable[Readiness]]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6; port 0: any free port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ConfigError(
            f"metrics address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9108, or port 0 "
            "for any free port)"
        )
    return host, port


class MetricsEndpoint:
    """Serves the three paths until :meth:`close`; ``async with`` starts it.

    ``metrics`` renders the exposition; ``readiness`` judges ``/readyz``
    (200 when ready, 503 otherwise, with the checks as JSON). ``/healthz`` is
    200 while the process answers at all.
    """

    def __init__(self, listen: str, *, metrics: MetricsSource, readiness: ReadinessSource) -> None:
        self.host, self.port = parse_listen(listen)
        self._metrics = metrics
        self._readiness = readiness
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}; "
                "choose another --metrics address"
            ) from None
        # With port 0 the system chose one: say which.
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.sleep(0)

    async def __aenter__(self) -> MetricsEndpoint:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, content_type, body = await self._respond(head)
            request_line = head.split(b"\r\n", 1)[0].split()
            body_out = b"" if request_line and request_line[0] == b"HEAD" else body
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    f"Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + body_out
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sent no complete request gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return 405, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        if target == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, await self._metrics()
            except Exception as exc:  # a scrape that fails says why, and the server goes on
                log.error("metrics failed: %r", exc)
                return 503, "text/plain", f"metrics unavailable: {exc}\n".encode()
        if target == "/healthz":
            return 200, "application/json", b'{"status": "ok"}\n'
        if target == "/readyz":
            try:
                readiness = await self._readiness()
            except Exception as exc:
                log.error("readiness check failed: %r", exc)
                body = {"ready": False, "failed": ["readiness"], "error": str(exc)}
                return 503, "application/json", json.dumps(body).encode() + b"\n"
            body_bytes = json.dumps(readiness.as_dict()).encode() + b"\n"
            return (200 if readiness.ready else 503), "application/json", body_bytes
        return 404, "text/plain", b"not found: /metrics, /healthz and /readyz are served\n"
