"""Asking a running saltbus publisher about itself."""

from __future__ import annotations

import time
from typing import Any

from saltbus.client.sockets import auth_frame, connect, describe
from saltbus.config import Config
from saltbus.control import Stats, StatsRequest, decode_control, encode_control
from saltbus.errors import BusClosedError, BusTimeoutError
from saltbus.wire import FrameDecoder


def fetch_stats(config: Config, timeout: float = 2.0) -> dict[str, Any]:
    """The publisher's statistics. Raises :class:`BusTimeoutError` when no
    answer comes (a Salt publisher keeps no statistics and never answers)."""
    sock = connect(config.pub_address, timeout)
    try:
        framing = config.generation.pub_framing
        sock.sendall((auth_frame(config, framing) or b"") + encode_control(StatsRequest(), framing))
        decoder = FrameDecoder(max_frame_size=config.max_frame_size)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(256 * 1024)
            except TimeoutError:
                break
            if not data:
                raise BusClosedError("the publisher closed the connection")
            decoder.receive_data(data)
            for frame in decoder:
                if not frame.body:
                    message = decode_control(frame)
                    if isinstance(message, Stats):
                        return dict(message.stats)
    finally:
        sock.close()
    raise BusTimeoutError(
        f"no statistics from the publisher at {describe(config.pub_address)} within {timeout} s; "
        "is it saltbus? (Salt's publisher keeps none)"
    )
