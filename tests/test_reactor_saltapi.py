"""saltbus.reactor.saltapi: the salt_api: settings are checked when the reactor is
built, and a salt-api that cannot be reached or answers an error fails the
reaction with the reason. (tests/interop/test_interop_salt_api.py: a real salt-api.)"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from saltbus.errors import ConfigError
from saltbus.reactor.errors import SaltUnreachableError
from saltbus.reactor.saltapi import SaltApi

GOOD = {"url": "http://127.0.0.1:1/run", "username": "u", "password": "p"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**GOOD, "token": "x"}, "unknown key token"),
        ({**GOOD, "url": "salt:8000"}, "url must be salt-api's http"),
        ({"url": GOOD["url"], "username": "u"}, "password is needed"),
    ],
)
def test_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SaltApi(settings)


def test_describe_names_url_and_eauth() -> None:
    assert SaltApi(GOOD).describe() == "salt-api at http://127.0.0.1:1/run (eauth auto)"


def test_nothing_listening_fails_with_the_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = SaltApi({**GOOD, "url": f"http://127.0.0.1:{port}/run", "timeout": 5})
    request = {"op": "local", "fun": "test.ping", "tgt": "*"}
    with pytest.raises(SaltUnreachableError, match=f"cannot reach salt-api at .*:{port}/run"):
        asyncio.run(api.call(request))
