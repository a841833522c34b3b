"""Helpers of the HTTP bridge's tests: a real uvicorn server on an ephemeral
loopback port, an SSE reader, tokens. Plain functions and context managers
(each test module makes its own fixtures of them)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from saltbus.http.serving import BridgeServer
from saltbus.http.tokens import TokenStore

START_TIMEOUT = 10.0


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve the bridge ``app`` with uvicorn on 127.0.0.1:<free port> in a
    thread, as ``saltbus http`` does; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = BridgeServer(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"),
        app.state.bridge,
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@dataclass
class SseMessage:
    id: str | None = None
    event: str | None = None
    data: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Reads SSE messages from a streaming httpx response, with deadlines."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.comments = 0

    def next(self) -> SseMessage:
        message = SseMessage()
        data: list[str] = []
        for line in self._lines:
            if line == "":
                if data or message.fields:
                    message.data = "\n".join(data)
                    return message
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                message.fields[name] = value
                if name == "id":
                    message.id = value
                elif name == "event":
                    message.event = value
        raise EOFError("the stream ended")

    def take(self, count: int) -> list[SseMessage]:
        return [self.next() for _ in range(count)]

    def until(self, tag: str) -> list[SseMessage]:
        """Messages up to and including the first whose data has ``tag``."""
        got = []
        while True:
            message = self.next()
            got.append(message)
            if message.data and message.json()["tag"] == tag:
                return got


@contextlib.contextmanager
def sse(
    client: httpx.Client, url: str, *, headers: dict[str, str] | None = None, timeout: float = 10
) -> Iterator[SseReader]:
    """An open SSE stream (the read timeout bounds every wait for a line)."""
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def make_tokens(path: Path, **grants: tuple[list[str], list[str]]) -> dict[str, str]:
    """A token file with one token per keyword: name=(read, fire); returns the secrets."""
    store = TokenStore(path)
    return {name: store.create(name, read, fire) for name, (read, fire) in grants.items()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@contextlib.asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in this process (no lifespan: the bridge
    starts on its first request, as when mounted); the bridge is closed after."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            yield client
    finally:
        await app.state.bridge.close()
