"""Webhooks: salt-api's /hook event, HMAC signatures per path, tokens otherwise."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from saltbus.client import Listener
from saltbus.config import Config
from saltbus.event import Event
from saltbus.http import SALT_HOOK_PREFIX, Settings, TokenStore, create_app
from saltbus.http.hooks import hook_tag, parse_post, secret_for, sign
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, in_process, make_tokens

SECRET = "s3cret-for-github"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    return make_tokens(
        tmp_path / "tokens.json", hooks=(["*"], ["saltbus/hook/*"]), app=(["*"], ["app/*"])
    )


@pytest.fixture
def tokens(tmp_path: Path, secrets: dict[str, str]) -> TokenStore:
    return TokenStore.open(tmp_path / "tokens.json")


def _post(
    config: Config, tokens: TokenStore, path: str, **request: Any
) -> tuple[httpx.Response, Event | None]:
    """POST to the app and return the answer and the event the bus saw (if any)."""
    app = create_app(config, tokens=tokens, hook_secrets={"github": SECRET, "signed/*": SECRET})

    async def main() -> httpx.Response:
        async with in_process(app) as client:
            return await client.post(path, **request)

    with Listener(config) as listener:
        listener.connect(5)
        answer = asyncio.run(main())
        event = listener.receive(0.5 if answer.status_code != 200 else 5)
    return answer, event


def test_hook_fires_what_salt_api_fires(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    body = json.dumps({"ref": "main", "n": 1}).encode()
    answer, event = _post(
        bus_config,
        tokens,
        "/hook/deploy/web",
        content=body,
        headers={"Content-Type": "application/json", "X-Custom-Thing": "yes"}
        | bearer(secrets["hooks"]),
    )
    assert answer.status_code == 200, answer.text
    assert event is not None and event.tag == "saltbus/hook/deploy/web"
    # Answered as POST /events is: acknowledged, with the seq the bus gave it.
    assert isinstance(event.seq, int)
    assert answer.json() == {"success": True, "tag": "saltbus/hook/deploy/web", "seq": event.seq}
    assert event.data["body"] == body.decode()
    assert event.data["post"] == {"ref": "main", "n": 1}
    headers = event.data["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Custom-Thing"] == "yes"  # named as CherryPy names them
    assert "Authorization" not in headers  # the caller's token stays out of the bus


def test_a_form_body_is_parsed(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    answer, event = _post(
        bus_config,
        tokens,
        "/hook/form",
        data={"a": "1", "b": "x"},
        headers=bearer(secrets["hooks"]),
    )
    assert answer.status_code == 200
    assert event is not None and event.data["post"] == {"a": "1", "b": "x"}


def test_hmac_signature_is_accepted_without_a_token(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore
):
    body = b'{"action": "opened"}'
    answer, event = _post(
        bus_config,
        tokens,
        "/hook/github",
        content=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(SECRET, body)},
    )
    assert answer.status_code == 200, answer.text
    assert event is not None and event.tag == "saltbus/hook/github"
    assert answer.json()["seq"] == event.seq
    assert event.data["post"] == {"action": "opened"}


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "sha256=" + "0" * 64,
        sign("another secret", b'{"action": "opened"}'),
        sign(SECRET, b'{"action": "closed"}'),  # for another body
        "sha1=abc",
    ],
)
def test_hmac_refuses_a_missing_or_wrong_signature(
    bus_config: Config,
    publisher: EmbeddedPublisher,
    tokens: TokenStore,
    secrets: dict[str, str],
    signature: str | None,
):
    headers = {"Content-Type": "application/json"} | bearer(secrets["hooks"])
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    # A token does not replace the signature on a path that has a secret.
    answer, event = _post(
        bus_config, tokens, "/hook/signed/repo", content=b'{"action": "opened"}', headers=headers
    )
    assert answer.status_code == 401
    assert event is None


def test_a_token_must_be_allowed_to_fire_the_hook_tag(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    answer, event = _post(
        bus_config, tokens, "/hook/x", content=b"", headers=bearer(secrets["app"])
    )
    assert answer.status_code == 403
    assert event is None


def test_token_in_the_query_for_senders_that_only_take_a_url(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    answer, event = _post(
        bus_config, tokens, "/hook/ping", params={"token": secrets["hooks"]}, content=b"plain"
    )
    assert answer.status_code == 200
    assert event is not None and event.data["body"] == "plain" and event.data["post"] == {}


def test_salt_api_prefix(bus_config: Config, publisher: EmbeddedPublisher):
    app = create_app(bus_config, hook_prefix=SALT_HOOK_PREFIX)

    async def main() -> httpx.Response:
        async with in_process(app) as client:
            return await client.post("/hook/x", json={"k": "v"})

    with Listener(bus_config) as listener:
        listener.connect(5)
        assert asyncio.run(main()).status_code == 200
        event = listener.receive(5)
    assert event is not None and event.tag == "salt/netapi/hook/x"


def test_a_hook_without_a_publisher_is_503(bus_config: Config, tokens: TokenStore):
    app = create_app(
        bus_config,
        tokens=tokens,
        hook_secrets={"github": SECRET},
        settings=Settings(fire_timeout=0.3),
    )

    async def main() -> httpx.Response:
        async with in_process(app) as client:
            body = b"{}"
            signed = {"X-Hub-Signature-256": sign(SECRET, body)}
            return await client.post("/hook/github", content=body, headers=signed)

    answer = asyncio.run(main())
    assert answer.status_code == 503
    assert answer.json()["success"] is False and answer.json()["error"]


def test_bad_json_is_400(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    answer, _ = _post(
        bus_config,
        tokens,
        "/hook/x",
        content=b"{not json",
        headers={"Content-Type": "application/json"} | bearer(secrets["hooks"]),
    )
    assert answer.status_code == 400


def test_helpers():
    assert hook_tag("saltbus/hook", "a/b/") == "saltbus/hook/a/b"
    assert hook_tag("salt/netapi/hook/", "") == "salt/netapi/hook"
    assert secret_for({"a": "1", "b/*": "2"}, "b/c") == "2"
    assert secret_for({"a": "1"}, "c") is None
    assert parse_post("application/json; charset=utf-8", b"[1]") == [1]
    assert parse_post("text/plain", b"hello") == {}
    assert parse_post("application/x-www-form-urlencoded", b"a=1&a=2&b=") == {
        "a": ["1", "2"],
        "b": "",
    }
    assert sign("key", b"body").startswith("sha256=") and len(sign("key", b"body")) == 71
