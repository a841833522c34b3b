"""The publisher daemon: ``startup → serve → shutdown``, as uvicorn's Server."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Final

from saltbus.config import Address, Config
from saltbus.server.connections import ConnectionRegistry, PullConnection, SubscriberConnection
from saltbus.server.fanout import FanOut, SubscriberStats
from saltbus.server.sockets import BusLock, bind_listener, ensure_sock_dir, remove_socket_file

log = logging.getLogger("saltbus.server")

# How long shutdown waits for listeners to read what was already published to them.
DRAIN_TIMEOUT: Final = 2.0


class Server:
    """One bus: a pull socket in, a publish socket out.

    Use ``await server.serve()`` (until :meth:`request_exit`), or
    ``async with Server(config) as server:`` to run it alongside other tasks.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.fanout = FanOut(config.generation.pub_framing)
        self._registry = ConnectionRegistry()
        self._lock = BusLock(config) if config.ipc_mode == "ipc" else None
        self._listeners: list[asyncio.Server] = []
        self._exit: asyncio.Event | None = None
        self.pub_address: Address = config.pub_address
        self.pull_address: Address = config.pull_address

    # -- lifecycle ---------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        if self.config.ipc_mode == "ipc":
            ensure_sock_dir(self.config.sock_dir)
        if self._lock is not None:
            self._lock.acquire()
        try:
            pull_sock = bind_listener(self.config.pull_address)
            try:
                pub_sock = bind_listener(self.config.pub_address)
            except BaseException:
                pull_sock.close()
                remove_socket_file(self.config.pull_address)
                raise
            cfg = self.config
            registry = self._registry
            self._listeners.append(
                await _serve(
                    loop,
                    lambda: SubscriberConnection(
                        self.fanout,
                        registry,
                        cfg.subscriber_queue_events,
                        cfg.subscriber_queue_bytes,
                    ),
                    pub_sock,
                )
            )
            self._listeners.append(
                await _serve(
                    loop,
                    lambda: PullConnection(self.fanout, registry, cfg.max_frame_size),
                    pull_sock,
                )
            )
            self.pub_address = _bound_address(pub_sock, cfg.pub_address)
            self.pull_address = _bound_address(pull_sock, cfg.pull_address)
        except BaseException:
            await self._close_listeners()
            if self._lock is not None:
                self._lock.release()
            raise
        log.debug(
            "saltbus publisher (%s node, Salt %s framing) serving %s and %s",
            cfg.node,
            cfg.salt_version,
            self.pub_address,
            self.pull_address,
        )

    async def serve(self) -> None:
        await self.startup()
        try:
            await self.wait_for_exit()
        finally:
            await self.shutdown()

    async def wait_for_exit(self) -> None:
        assert self._exit is not None, "startup() first"
        await self._exit.wait()

    def request_exit(self) -> None:
        """Ask the server to stop. Safe from a signal handler: it only sets a flag."""
        if self._exit is not None:
            self._exit.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)

    async def shutdown(self) -> None:
        # Stop taking new connections and events first; then give listeners a
        # moment to read what was already published to them.
        await self._close_listeners()
        for pull in list(self._registry.pull):
            pull.close()
        await self._drain_subscribers()
        for sub in list(self._registry.subscribers):
            sub.close()
        remove_socket_file(self.config.pub_address)
        remove_socket_file(self.config.pull_address)
        if self._lock is not None:
            self._lock.release()
        await asyncio.sleep(0)  # let the transports run their connection_lost
        log.debug("saltbus publisher stopped; %d events published", self.fanout.next_seq - 1)

    async def __aenter__(self) -> Server:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- inspection --------------------------------------------------------

    def subscriber_stats(self) -> list[SubscriberStats]:
        return [s.stats() for s in self.fanout.subscribers]

    # -- helpers -----------------------------------------------------------

    async def _close_listeners(self) -> None:
        # close() stops accepting at once; wait_closed() is not awaited because
        # from Python 3.12 on it also waits for every open connection to end.
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        await asyncio.sleep(0)

    async def _drain_subscribers(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while loop.time() < deadline and any(s.pending_bytes for s in self._registry.subscribers):
            await asyncio.sleep(0.01)


async def _serve(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
) -> asyncio.Server:
    if sock.family == socket.AF_UNIX:
        return await loop.create_unix_server(factory, sock=sock)
    return await loop.create_server(factory, sock=sock)


def _bound_address(sock: socket.socket, configured: Address) -> Address:
    if isinstance(configured, tuple):
        host, port = sock.getsockname()[:2]
        return (str(host), int(port))
    return configured
