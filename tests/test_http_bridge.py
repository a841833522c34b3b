"""What the bridge's endpoints share: tokens from requests, JSON, resume points."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from saltbus.errors import SaltbusError
from saltbus.event import Event
from saltbus.http.bridge import (
    BodyTooLargeError,
    PayloadCache,
    dumps,
    parse_seq,
    presented_token,
    read_body,
)
from saltbus.http.ws import message


def _request(query: str = "", **headers: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/events",
            "query_string": query.encode(),
            "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        }
    )


def test_presented_token():
    assert presented_token(_request(authorization="Bearer abc"), query_token=False) == "abc"
    assert presented_token(_request(authorization="bearer  abc "), query_token=False) == "abc"
    assert presented_token(_request(authorization="Basic abc"), query_token=False) is None
    assert presented_token(_request("token=q"), query_token=False) is None
    assert presented_token(_request("token=q"), query_token=True) == "q"
    assert presented_token(_request("token="), query_token=True) is None
    # The header wins over the query.
    both = _request("token=q", authorization="Bearer h")
    assert presented_token(both, query_token=True) == "h"


def _upload(chunks: list[bytes], **headers: str) -> Request:
    """A POST whose body arrives in ``chunks``."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    scope = _request(**headers).scope | {"method": "POST"}
    return Request(scope, receive)


def test_read_body_refuses_what_is_over_the_limit_as_a_saltbus_error():
    assert asyncio.run(read_body(_upload([b"ab", b"cd"]), 4)) == b"abcd"
    # Streamed past the limit, or declared over it: refused, under the one tree.
    for request in (_upload([b"ab", b"cde"]), _upload([b"a"], content_length="5")):
        with pytest.raises(SaltbusError) as refused:
            asyncio.run(read_body(request, 4))
        assert isinstance(refused.value, BodyTooLargeError)
        assert str(refused.value) == "body over max_event_size (4 bytes)"


def test_parse_seq():
    assert parse_seq("12") == 12
    assert parse_seq(" 12 ") == 12
    assert parse_seq(None, "7") == 7
    assert parse_seq("", "x", None) is None
    assert parse_seq("-1") is None
    assert parse_seq("1.5") is None


def test_dumps_is_compact_and_takes_what_msgpack_gives():
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
    assert (
        dumps({"raw": b"\xffab", "t": (1, 2), "s": {3}}) == '{"raw":"\ufffdab","t":[1,2],"s":[3]}'
    )


def test_payload_cache_encodes_an_event_once():
    cache = PayloadCache(size=2)
    event = Event("a/b", {"n": 1}, 5)
    first = cache.payload(event)
    assert first == '{"tag":"a/b","data":{"n":1}}'
    assert cache.payload(event) is first
    # An equal event that is another object is encoded on its own.
    assert cache.payload(Event("a/b", {"n": 1}, 5)) == first
    for n in range(5):
        cache.payload(Event("x", {"n": n}))
    assert cache.payload(event) == first  # evicted, encoded again


def test_websocket_message_adds_the_seq():
    event = Event("a/b", {"n": 1}, 5)
    payload = PayloadCache().payload(event)
    assert message(event, payload) == '{"tag":"a/b","data":{"n":1},"seq":5}'
    salt = Event("a/b", {})
    assert message(salt, PayloadCache().payload(salt)).endswith(',"seq":null}')
