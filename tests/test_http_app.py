"""The bridge's app in process (httpx's ASGI transport): firing, auth on every
endpoint, the page and its files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from saltbus.client import Listener
from saltbus.config import Config
from saltbus.http import Settings, TokenStore, create_app
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, in_process, make_tokens


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    return make_tokens(
        tmp_path / "tokens.json",
        admin=(["*"], ["*"]),
        app=(["app/*"], ["app/*"]),
        reader=(["*"], []),
    )


@pytest.fixture
def tokens(tmp_path: Path, secrets: dict[str, str]) -> TokenStore:
    return TokenStore.open(tmp_path / "tokens.json")


def test_post_events_fires_and_answers_the_seq(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.post(
                "/events",
                json={"tag": "app/deploy", "data": {"v": 2}},
                headers=bearer(secrets["app"]),
            )

    with Listener(bus_config, "app/") as listener:
        listener.connect(5)
        answer = asyncio.run(main())
        event = listener.receive(5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["tag"] == "app/deploy"
    assert event is not None and event.tag == "app/deploy" and event.data["v"] == 2
    assert body["seq"] == event.seq


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"data": {}}, 400),
        ({"tag": "", "data": {}}, 400),
        ({"tag": "app/x", "data": [1]}, 400),
        ([1, 2], 400),
        ({"tag": "salt/auth", "data": {}}, 403),  # outside the token's fire patterns
    ],
)
def test_post_events_refuses_bad_requests(
    bus_config: Config,
    publisher: EmbeddedPublisher,
    tokens: TokenStore,
    secrets: dict[str, str],
    body: object,
    status: int,
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.post("/events", json=body, headers=bearer(secrets["app"]))

    answer = asyncio.run(main())
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()


def test_post_events_refuses_a_body_over_max_event_size(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            big = "x" * (bus_config.max_event_size + 10)
            return await client.post(
                "/events",
                json={"tag": "app/x", "data": {"big": big}},
                headers=bearer(secrets["app"]),
            )

    assert asyncio.run(main()).status_code == 413


def test_post_events_without_a_publisher_is_503(
    bus_config: Config, tokens: TokenStore, secrets: dict[str, str]
):
    app = create_app(bus_config, tokens=tokens, settings=Settings(fire_timeout=0.3))

    async def main() -> httpx.Response:
        async with in_process(app) as client:
            return await client.post(
                "/events", json={"tag": "app/x", "data": {}}, headers=bearer(secrets["app"])
            )

    assert asyncio.run(main()).status_code == 503


def test_a_reader_may_not_fire(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.post(
                "/events", json={"tag": "app/x"}, headers=bearer(secrets["reader"])
            )

    assert asyncio.run(main()).status_code == 403


PROTECTED = [
    ("GET", "/events"),
    ("GET", "/events?format=salt"),
    ("POST", "/events"),
    ("GET", "/whoami"),
    ("POST", "/hook"),
    ("POST", "/hook/github/push"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("credentials", ["none", "wrong-header", "wrong-query", "revoked"])
def test_every_endpoint_refuses_a_missing_or_wrong_token(
    bus_config: Config,
    publisher: EmbeddedPublisher,
    tmp_path: Path,
    tokens: TokenStore,
    secrets: dict[str, str],
    method: str,
    path: str,
    credentials: str,
):
    headers: dict[str, str] = {}
    if credentials == "wrong-header":
        headers = bearer(secrets["admin"] + "x")
    elif credentials == "wrong-query":
        path += ("&" if "?" in path else "?") + "token=sbt_wrong"
    elif credentials == "revoked":
        TokenStore.open(tmp_path / "tokens.json").revoke("admin")
        headers = bearer(secrets["admin"])

    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.request(
                method, path, headers=headers, json={"tag": "app/x", "data": {}}
            )

    answer = asyncio.run(main())
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_post_events_takes_no_token_from_the_query(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.post(
                "/events", params={"token": secrets["admin"]}, json={"tag": "app/x"}
            )

    assert asyncio.run(main()).status_code == 401


def test_whoami(
    bus_config: Config, publisher: EmbeddedPublisher, tokens: TokenStore, secrets: dict[str, str]
):
    async def main() -> httpx.Response:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return await client.get("/whoami", headers=bearer(secrets["app"]))

    assert asyncio.run(main()).json() == {
        "name": "app",
        "read": ["app/*"],
        "fire": ["app/*"],
        "auth": True,
    }


def test_without_auth_everything_is_allowed(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with in_process(create_app(bus_config)) as client:
            who = await client.get("/whoami")
            fired = await client.post("/events", json={"tag": "any/thing", "data": {}})
            return who, fired

    who, fired = asyncio.run(main())
    assert who.json()["auth"] is False and who.json()["read"] == ["*"]
    assert fired.status_code == 200


def test_the_page_and_its_files_need_no_token(bus_config: Config, tokens: TokenStore):
    async def main() -> list[httpx.Response]:
        async with in_process(create_app(bus_config, tokens=tokens)) as client:
            return [
                await client.get(path)
                for path in ("/", "/static/app.js", "/static/style.css", "/openapi.json")
            ]

    page, script, style, openapi = asyncio.run(main())
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "EventSource" in script.text
    assert style.status_code == 200
    assert openapi.status_code == 200


def test_mounted_in_another_app(bus_config: Config, publisher: EmbeddedPublisher):
    bridge_app = create_app(bus_config)
    host = Starlette(routes=[Mount("/bus", app=bridge_app)])

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=host)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
                return [
                    await client.get("/bus"),
                    await client.get("/bus/"),
                    await client.get("/bus/static/app.js"),
                    await client.post("/bus/events", json={"tag": "app/x", "data": {}}),
                ]
        finally:
            await bridge_app.state.bridge.close()

    redirect, page, script, fired = asyncio.run(main())
    assert redirect.status_code in (307, 308) and redirect.headers["location"].endswith("/bus/")
    assert page.status_code == 200 and 'src="static/app.js"' in page.text  # relative URLs
    assert script.status_code == 200
    assert fired.json()["success"] is True  # the bridge started on its first request
