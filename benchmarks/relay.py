"""The reference relay: bytes from the pull socket to every publish-socket reader.

No decoding, no numbering, no queue of its own: what a firing client writes is
written as it came to each subscriber (one firing client at a time, or frames
could interleave), with the kernel's and the transport's buffers as the only
flow control (reading pauses while any subscriber's transport is full). It
gives the limit of moving these frames through a process on this machine.

Run as a script by the benchmark: ``relay.py --sock-dir D``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import cast

PUB = "master_event_pub.ipc"
PULL = "master_event_pull.ipc"
HIGH_WATER = 256 * 1024


class Relay:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Transport] = set()
        self.pullers: set[asyncio.Transport] = set()
        self.full: set[asyncio.Transport] = set()

    def forward(self, data: bytes) -> None:
        for transport in self.subscribers:
            transport.write(data)

    def pause(self, transport: asyncio.Transport) -> None:
        self.full.add(transport)
        for puller in self.pullers:
            puller.pause_reading()

    def resume(self, transport: asyncio.Transport) -> None:
        self.full.discard(transport)
        if not self.full:
            for puller in self.pullers:
                puller.resume_reading()


class Pull(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.relay.pullers.add(transport)
        if self.relay.full:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.relay.forward(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.relay.pullers.discard(self.transport)


class Pub(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay.subscribers.add(transport)

    def data_received(self, data: bytes) -> None:
        pass  # what a subscriber writes is ignored, as Salt's publisher does

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.relay.pause(self.transport)

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.relay.resume(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.relay.subscribers.discard(self.transport)
            self.relay.resume(self.transport)


async def serve(sock_dir: str) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pub = await loop.create_unix_server(lambda: Pub(relay), os.path.join(sock_dir, PUB))
    pull = await loop.create_unix_server(lambda: Pull(relay), os.path.join(sock_dir, PULL))
    await stop.wait()
    pub.close()
    pull.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sock-dir", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(serve(args.sock_dir))
    else:
        uvloop.run(serve(args.sock_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
