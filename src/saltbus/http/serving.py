"""Running the bridge's app on uvicorn: the server, and what its log shows."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Iterator
from typing import Final

import uvicorn

from saltbus.http.bridge import Bridge

# uvicorn logs HTTP requests on "uvicorn.access", but the WebSocket handshakes
# on "uvicorn.error", whatever its access_log setting: both show URLs, and a
# URL may carry ?token= (EventSource and browsers' WebSocket cannot send headers).
ACCESS_LOGGERS: Final = ("uvicorn.access", "uvicorn.error")
WEBSOCKET_LINE: Final = '%s - "WebSocket %s"'  # how uvicorn's handshake lines begin
# The value of a ?token= parameter, or of an Authorization header (the
# WebSocket library logs every header at debug level).
_SECRETS: Final = re.compile(r"([?&]token=|\bbearer\s+)[^&\s\"']*", re.IGNORECASE)


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


def redact(text: str) -> str:
    """``text`` with every ``token=`` query parameter's value, and every bearer
    token, hidden."""
    return _SECRETS.sub("\\1…", text)


class RedactTokens(logging.Filter):
    """Hides tokens in log lines (in their arguments, where uvicorn puts the
    URL, and in an already formatted message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class DropWebSocketLines(logging.Filter):
    """Drops uvicorn's line per WebSocket handshake (for ``--no-access-log``,
    which uvicorn applies to HTTP requests only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(WEBSOCKET_LINE))


@contextlib.contextmanager
def access_log_filters(*, access_log: bool) -> Iterator[None]:
    """While serving: tokens hidden from uvicorn's request lines, and the
    WebSocket ones dropped too when there is to be no access log. The filters
    are removed after, as the loggers outlive the server."""
    installed: list[tuple[logging.Logger, logging.Filter]] = []
    for name in ACCESS_LOGGERS:
        installed.append((logging.getLogger(name), RedactTokens()))
    if not access_log:
        installed.append((logging.getLogger("uvicorn.error"), DropWebSocketLines()))
    for logger, log_filter in installed:
        logger.addFilter(log_filter)
    try:
        yield
    finally:
        for logger, log_filter in installed:
            logger.removeFilter(log_filter)
