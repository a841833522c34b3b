"""GET /ws against a real uvicorn server, with the websockets client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from saltbus.client import Listener, Sender
from saltbus.config import Config
from saltbus.http import Settings, TokenStore, create_app
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, make_tokens, serve


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    return make_tokens(
        tmp_path / "tokens.json", admin=(["*"], ["*"]), app=(["app/*"], ["app/cmd/*"])
    )


@pytest.fixture
def app(bus_config: Config, tmp_path: Path, secrets: dict[str, str]) -> Starlette:
    tokens = TokenStore.open(tmp_path / "tokens.json")
    return create_app(bus_config, tokens=tokens, settings=Settings(heartbeat=0.3))


@pytest.fixture
def ws_url(app: Starlette, publisher: EmbeddedPublisher) -> Iterator[str]:
    with serve(app) as url:
        yield url.replace("http://", "ws://") + "/ws"


@pytest.fixture
def sender(bus_config: Config, publisher: EmbeddedPublisher) -> Iterator[Sender]:
    with Sender(bus_config) as firing:
        yield firing


def _wait_for_members(app: Starlette, count: int) -> None:
    deadline = time.monotonic() + 10
    while app.state.bridge.hub.members != count:
        assert time.monotonic() < deadline, f"fan-out never had {count} members"
        time.sleep(0.01)


def _receive(ws: ClientConnection) -> dict[str, Any]:
    message = json.loads(ws.recv(timeout=10))
    assert isinstance(message, dict)
    return message


def test_events_over_a_websocket(
    app: Starlette, ws_url: str, sender: Sender, secrets: dict[str, str]
):
    with connect(f"{ws_url}?tag=app/", additional_headers=bearer(secrets["admin"])) as ws:
        _wait_for_members(app, 1)
        fired = sender.fire("app/a", {"n": 1}, ack=True)
        sender.fire("other/b", {})
        sender.fire("app/c", {"n": 2})
        first, second = _receive(ws), _receive(ws)
    assert first == {"tag": "app/a", "data": fired.data, "seq": fired.seq}
    assert second["tag"] == "app/c"


def test_fire_through_the_websocket(
    app: Starlette, ws_url: str, bus_config: Config, secrets: dict[str, str]
):
    with (
        Listener(bus_config, "app/cmd/") as listener,
        connect(f"{ws_url}?token={secrets['app']}&tag=nothing/") as ws,
    ):
        listener.connect(5)
        ws.send(json.dumps({"tag": "app/cmd/restart", "data": {"svc": "web"}, "id": 7}))
        answer = _receive(ws)
        event = listener.receive(5)
        ws.send(json.dumps({"tag": "salt/auth", "data": {}, "id": 8}))
        refused = _receive(ws)
        ws.send("not json")
        broken = _receive(ws)
        ws.send(json.dumps({"tag": "app/cmd/x", "data": "text"}))
        bad_data = _receive(ws)
        # A binary message is read as the UTF-8 of the same JSON.
        ws.send(json.dumps({"tag": "app/cmd/binary", "data": {}, "id": 9}).encode())
        binary = _receive(ws)
        binary_event = listener.receive(5)
    assert event is not None and event.data["svc"] == "web"
    assert binary_event is not None and binary_event.tag == "app/cmd/binary"
    assert binary == {"id": 9, "fired": {"tag": "app/cmd/binary", "seq": binary_event.seq}}
    assert answer == {"id": 7, "fired": {"tag": "app/cmd/restart", "seq": event.seq}}
    assert refused["id"] == 8 and "may not fire" in refused["error"]
    assert "not JSON" in broken["error"]
    assert "data must be an object" in bad_data["error"]


def test_resume_over_a_websocket(ws_url: str, sender: Sender, secrets: dict[str, str]):
    start = sender.fire("r/start", {}, ack=True)
    seqs = [sender.fire("r/x", {"n": n}, ack=True).seq for n in range(100)]
    url = f"{ws_url}?tag=r/x&last_event_id={start.seq}&token={secrets['admin']}"
    with connect(url) as ws:
        got = [_receive(ws)["seq"] for _ in range(100)]
    assert got == seqs


def test_backlog_over_a_websocket(ws_url: str, sender: Sender, secrets: dict[str, str]):
    seqs = [sender.fire("bk/x", {"n": n}, ack=True).seq for n in range(10)]
    sender.fire("other/y", {}, ack=True)
    with connect(f"{ws_url}?tag=bk/&backlog=3&token={secrets['admin']}") as ws:
        backlog = [_receive(ws)["seq"] for _ in range(3)]
        live = sender.fire("bk/live", {}, ack=True)
        after = _receive(ws)
    assert backlog == seqs[-3:]
    assert after["seq"] == live.seq


def test_a_scoped_token_never_sees_other_events(
    app: Starlette, ws_url: str, sender: Sender, secrets: dict[str, str]
):
    with connect(ws_url, additional_headers=bearer(secrets["app"])) as ws:
        _wait_for_members(app, 1)
        for n in range(10):
            sender.fire("salt/auth", {"n": n})
            sender.fire("app/x", {"n": n})
        sender.fire("app/end", {})
        tags = []
        while not tags or tags[-1] != "app/end":
            tags.append(_receive(ws)["tag"])
    assert set(tags) == {"app/x", "app/end"}
    assert len(tags) == 11


@pytest.mark.parametrize("credentials", ["none", "wrong-header", "wrong-query"])
def test_refused_without_a_valid_token(ws_url: str, credentials: str):
    url, headers = ws_url, {}
    if credentials == "wrong-header":
        headers = bearer("sbt_wrong")
    elif credentials == "wrong-query":
        url += "?token=sbt_wrong"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers, open_timeout=10)
    assert refused.value.response.status_code == 401


def test_a_bad_filter_is_refused(ws_url: str, secrets: dict[str, str]):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_url}?match_type=nope&token={secrets['admin']}", open_timeout=10)
    assert refused.value.response.status_code == 400


def test_clients_leave_the_fanout(app: Starlette, ws_url: str, secrets: dict[str, str]):
    url = f"{ws_url}?token={secrets['admin']}"
    with connect(url), connect(url):
        _wait_for_members(app, 2)
    _wait_for_members(app, 0)


def test_a_revoked_token_loses_its_websocket(
    app: Starlette, ws_url: str, tmp_path: Path, secrets: dict[str, str]
):
    with connect(ws_url, additional_headers=bearer(secrets["admin"])) as ws:
        _wait_for_members(app, 1)
        TokenStore.open(tmp_path / "tokens.json").revoke("admin")
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(100):  # closed within a heartbeat (0.3 s)
                ws.send(json.dumps({"tag": "app/x", "data": {}}))
                _receive(ws)
                time.sleep(0.05)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
