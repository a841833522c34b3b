"""Running the bridge's app on uvicorn."""

from __future__ import annotations

import socket

import uvicorn

from saltbus.http.bridge import Bridge


class BridgeServer(uvicorn.Server):
    """uvicorn's server, which first ends the bridge's open streams when it
    shuts down: uvicorn waits for every response to finish, and an event
    stream never finishes by itself (it would be cancelled after
    ``timeout_graceful_shutdown``, with an error logged for each)."""

    def __init__(self, config: uvicorn.Config, bridge: Bridge) -> None:
        super().__init__(config)
        self.bridge = bridge

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.bridge.stop_streams()
        await super().shutdown(sockets)
