"""A publisher inside the current process, for tests and applications that
embed the bus without a second process.

The server runs on its own event loop in a thread that this object starts and
stops explicitly; nothing is hidden behind another API. Programs that already
run an event loop should use ``async with Server(config)`` instead.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Final

from saltbus.config import Address, Config
from saltbus.errors import BusTimeoutError
from saltbus.server.app import Server
from saltbus.server.fanout import SubscriberStats

START_TIMEOUT: Final = 10.0


class EmbeddedPublisher:
    """``with EmbeddedPublisher(config) as bus: ...`` serves the bus for the block."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._server = Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def pub_address(self) -> Address:
        return self._server.pub_address

    @property
    def pull_address(self) -> Address:
        return self._server.pull_address

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("EmbeddedPublisher already started")
        self._thread = threading.Thread(target=self._run, name="saltbus-publisher", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise BusTimeoutError(f"publisher did not start within {START_TIMEOUT} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(self._server.request_exit)
        thread.join()
        self._thread = None

    def subscriber_stats(self) -> list[SubscriberStats]:
        loop = self._loop
        if loop is None:
            return []

        async def read() -> list[SubscriberStats]:
            return self._server.subscriber_stats()

        return asyncio.run_coroutine_threadsafe(read(), loop).result(START_TIMEOUT)

    def __enter__(self) -> EmbeddedPublisher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._server.startup()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._server.wait_for_exit()
        finally:
            await self._server.shutdown()
