"""A stand-in publisher for firing tests: a real unix pull socket served by a
thread that answers acknowledgement requests as the test says, to see what the
clients do with answers saltbus's publisher gives only when its disk fails."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from saltbus.config import Config
from saltbus.control import ack_request_id
from saltbus.wire import FrameDecoder

WAIT = 5.0


class PullStandIn:
    """Accepts pull connections on ``config``'s socket; each event frame asking
    for an acknowledgement gets ``answer(request_id)`` written back (b"": none)."""

    def __init__(self, config: Config, answer: Callable[[int], bytes]) -> None:
        self.answer = answer
        config.sock_dir.mkdir(parents=True, exist_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(config.pull_address))
        self._server.listen(4)
        self._server.settimeout(WAIT)
        self.requests: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self._server.accept()
            with conn:
                conn.settimeout(WAIT)
                decoder = FrameDecoder()
                while data := conn.recv(65536):
                    decoder.receive_data(data)
                    for frame in decoder:
                        request_id = ack_request_id(frame)
                        if request_id is not None:
                            self.requests.append(request_id)
                            conn.sendall(self.answer(request_id))

    def close(self) -> None:
        self._server.close()
        self._thread.join(WAIT)


@contextlib.contextmanager
def stand_in(config: Config, answer: Callable[[int], bytes]) -> Iterator[PullStandIn]:
    publisher = PullStandIn(config, answer)
    try:
        yield publisher
    finally:
        publisher.close()


@contextlib.contextmanager
def saltbus_lock(lock_path: Path) -> Iterator[None]:
    """Hold the bus's lock file as saltbus's publisher does, so that
    ``config.served_by_saltbus()`` is True."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield
