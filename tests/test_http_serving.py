"""Serving on uvicorn: what its log shows of the requests (the real process's
log is checked in test_cli_http)."""

from __future__ import annotations

import logging

from saltbus.http.serving import (
    ACCESS_LOGGERS,
    DropWebSocketLines,
    RedactTokens,
    access_log_filters,
    redact,
)


def _record(logger: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.INFO, __file__, 1, msg, args, None)


def test_access_lines_hide_tokens():
    record = _record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/events?tag=a&token=sbt_secret&x=1",
        "1.1",
        200,
    )
    RedactTokens().filter(record)
    line = record.getMessage()
    assert "sbt_secret" not in line
    assert "tag=a&token=…&x=1" in line


def test_websocket_lines_hide_tokens():
    # uvicorn's own format for a handshake, on its "uvicorn.error" logger.
    record = _record(
        "uvicorn.error", '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws?token=sbt_s"
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?token=…" [accepted]'
    formatted = _record("uvicorn.error", 'client asked "/ws?a=1&token=sbt_s"')
    RedactTokens().filter(formatted)
    assert formatted.getMessage() == 'client asked "/ws?a=1&token=…"'
    assert redact("/events?xtoken=keep&token=") == "/events?xtoken=keep&token=…"
    # The WebSocket library's debug lines show every request header.
    header = _record("uvicorn.error", "< %s: %s", "authorization", "Bearer sbt_s")
    RedactTokens().filter(header)
    assert header.getMessage() == "< authorization: Bearer …"


def test_no_access_log_drops_websocket_lines_only():
    drop = DropWebSocketLines()
    assert not drop.filter(_record("uvicorn.error", '%s - "WebSocket %s" 403', "a", "/ws"))
    assert drop.filter(_record("uvicorn.error", "Application startup complete."))


def test_filters_are_installed_while_serving_only():
    loggers = [logging.getLogger(name) for name in ACCESS_LOGGERS]
    before = [list(logger.filters) for logger in loggers]
    with access_log_filters(access_log=False):
        kinds = [{type(f) for f in logger.filters} for logger in loggers]
        assert all(RedactTokens in kind for kind in kinds)
        assert DropWebSocketLines in kinds[ACCESS_LOGGERS.index("uvicorn.error")]
    with access_log_filters(access_log=True):
        assert all(DropWebSocketLines not in map(type, logger.filters) for logger in loggers)
    assert [list(logger.filters) for logger in loggers] == before
