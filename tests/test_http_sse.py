"""GET /events against a real uvicorn server: the SSE forms, filters,
heartbeats, resume with Last-Event-ID, token scopes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.event import Event
from saltbus.http import Settings, TokenStore, create_app
from saltbus.http.sse import format_event
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, make_tokens, serve, sse

HEARTBEAT = 0.3


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    return make_tokens(tmp_path / "tokens.json", admin=(["*"], ["*"]), app=(["app/*"], []))


@pytest.fixture
def app(bus_config: Config, tmp_path: Path, secrets: dict[str, str]) -> Starlette:
    tokens = TokenStore.open(tmp_path / "tokens.json")
    return create_app(bus_config, tokens=tokens, settings=Settings(heartbeat=HEARTBEAT))


@pytest.fixture
def base_url(app: Starlette, publisher: EmbeddedPublisher) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture
def sender(bus_config: Config, publisher: EmbeddedPublisher) -> Iterator[Sender]:
    with Sender(bus_config) as firing:
        yield firing


def _wait_for_members(app: Starlette, count: int) -> None:
    """Until the bridge's fan-out has ``count`` members (a stream is attached)."""
    deadline = time.monotonic() + 10
    while app.state.bridge.hub.members != count:
        assert time.monotonic() < deadline, f"fan-out never had {count} members"
        time.sleep(0.01)


def test_stream_form_and_filter(
    app: Starlette, base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    headers = bearer(secrets["admin"])
    with sse(client, f"{base_url}/events?tag=app/", headers=headers) as stream:
        _wait_for_members(app, 1)
        fired = [
            sender.fire(tag, {"n": n}, ack=True) for n, tag in enumerate(["app/a", "x/b", "app/c"])
        ]
        got = stream.take(2)
    assert [m.event for m in got] == ["app/a", "app/c"]
    assert [m.id for m in got] == [str(fired[0].seq), str(fired[2].seq)]
    assert got[0].json() == {"tag": "app/a", "data": {"n": 0, "_stamp": fired[0].data["_stamp"]}}


def test_match_types_are_salts(
    app: Starlette, base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    url = f"{base_url}/events?tag=salt/job/*/ret/*&match_type=fnmatch"
    with sse(client, url, headers=bearer(secrets["admin"])) as stream:
        _wait_for_members(app, 1)
        for tag in ("salt/job/1/new", "salt/job/1/ret/web1", "salt/job/2/ret/web2"):
            sender.fire(tag, {})
        assert [m.event for m in stream.take(2)] == ["salt/job/1/ret/web1", "salt/job/2/ret/web2"]


def test_heartbeats_on_an_idle_stream(base_url: str, client: httpx.Client, secrets: dict[str, str]):
    with sse(client, f"{base_url}/events", headers=bearer(secrets["admin"])) as stream:
        lines = stream.response.iter_lines()
        seen = [next(lines) for _ in range(6)]
    assert seen.count(": keepalive") >= 3


def test_resume_with_last_event_id_gets_exactly_what_was_missed(
    app: Starlette, base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    headers = bearer(secrets["admin"])
    url = f"{base_url}/events?tag=res/"
    with sse(client, url, headers=headers) as stream:
        _wait_for_members(app, 1)
        sender.fire("res/first", {})
        last_id = stream.next().id
    assert last_id is not None
    _wait_for_members(app, 0)  # the bridge saw the client go

    missed = []
    for n in range(100):
        sender.fire("noise/x", {"n": n})
        missed.append(sender.fire("res/n", {"n": n}, ack=True).seq)

    with sse(client, url, headers=headers | {"Last-Event-ID": last_id}) as stream:
        got = stream.take(100)
        sender.fire("res/end", {})
        after = stream.next()
    assert [m.json()["data"]["n"] for m in got] == list(range(100))
    assert [int(m.id or 0) for m in got] == missed
    assert after.event == "res/end"  # nothing more: no duplicate, no extra


def test_resume_with_the_query_parameter(
    base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    first = sender.fire("q/a", {}, ack=True)
    sender.fire("q/b", {}, ack=True)
    sender.fire("q/c", {}, ack=True)
    url = f"{base_url}/events?tag=q/&last_event_id={first.seq}&token={secrets['admin']}"
    with sse(client, url) as stream:
        assert [m.event for m in stream.take(2)] == ["q/b", "q/c"]


def test_backlog_opens_with_the_last_events_then_goes_on_live(
    base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    before = []
    for n in range(30):
        sender.fire("other/x", {"n": n}, ack=True)  # the app token may not read these
        before.append(sender.fire("app/bk", {"n": n}, ack=True).seq)
    sender.fire("other/last", {}, ack=True)
    url = f"{base_url}/events?backlog=5&token={secrets['app']}"
    with sse(client, url) as stream:
        backlog = stream.take(5)
        later = [sender.fire("app/bk", {"n": n}, ack=True).seq for n in range(30, 35)]
        live = stream.take(5)
    assert [int(m.id or 0) for m in backlog] == before[-5:]
    assert [m.json()["data"]["n"] for m in backlog] == list(range(25, 30))
    # No gap and no duplicate where the backlog meets the live events.
    assert [int(m.id or 0) for m in live] == later

    # A reconnecting EventSource sends Last-Event-ID to the same URL: it
    # resumes there, not with the backlog again.
    resume = {"Last-Event-ID": str(later[2])}
    with sse(client, f"{url}&tag=app/", headers=resume) as stream:
        assert [int(m.id or 0) for m in stream.take(2)] == later[3:]


def test_salt_api_form(
    app: Starlette, base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    url = f"{base_url}/events?format=salt&token={secrets['admin']}"
    with client.stream("GET", url) as response:
        lines = response.iter_lines()
        assert next(lines) == "retry: 400"
        _wait_for_members(app, 1)
        sender.fire("salt/auth", {"id": "web1"})
        event_lines = []
        for line in lines:
            if line.startswith(":"):
                continue
            event_lines.append(line)
            if line == "" and len(event_lines) > 1:
                break
    assert event_lines[0] == "tag: salt/auth"
    assert event_lines[1].startswith('data: {"tag":"salt/auth","data":{"id":"web1"')
    assert not any(line.startswith(("id:", "event:")) for line in event_lines)


def test_message_form_has_no_event_field():
    text = format_event(Event("a/b", {"x": 1}, 7), "message")
    assert text == 'id: 7\ndata: {"tag":"a/b","data":{"x":1}}\n\n'
    assert format_event(Event("a\nb", {}, 1)).splitlines()[1] == "event: a b"


def test_a_scoped_token_never_sees_other_events(
    app: Starlette, base_url: str, client: httpx.Client, sender: Sender, secrets: dict[str, str]
):
    url = f"{base_url}/events?token={secrets['app']}"
    with sse(client, url) as stream:
        _wait_for_members(app, 1)
        first = sender.fire("app/start", {}, ack=True)
        for n in range(20):
            sender.fire("salt/auth", {"n": n})
            sender.fire("salt/job/1/ret/web1", {"n": n})
            sender.fire("app/x", {"n": n})
        sender.fire("app/end", {})
        live = stream.until("app/end")
    # Also when resuming from the journal (the catch-up path).
    with sse(client, url, headers={"Last-Event-ID": str(first.seq)}) as stream:
        replayed = stream.until("app/end")
    for messages in (live, replayed):
        tags = {m.event for m in messages}
        assert tags <= {"app/start", "app/x", "app/end"}
        assert sum(m.event == "app/x" for m in messages) == 20


def test_bad_parameters_are_400(base_url: str, client: httpx.Client, secrets: dict[str, str]):
    headers = bearer(secrets["admin"])
    for query in ("match_type=sideways", "tag=(&match_type=regex", "format=xml", "backlog=-1"):
        answer = client.get(f"{base_url}/events?{query}", headers=headers)
        assert answer.status_code == 400, query
        assert "error" in answer.json()


def test_no_token_is_401_on_the_real_server(base_url: str, client: httpx.Client):
    assert client.get(f"{base_url}/events").status_code == 401
    assert client.get(f"{base_url}/events?token=sbt_nope").status_code == 401


def test_a_revoked_token_loses_its_stream(
    app: Starlette, base_url: str, client: httpx.Client, tmp_path: Path, secrets: dict[str, str]
):
    with sse(client, f"{base_url}/events", headers=bearer(secrets["app"])) as stream:
        _wait_for_members(app, 1)
        TokenStore.open(tmp_path / "tokens.json").revoke("app")
        with pytest.raises(EOFError):
            for _ in range(100):
                stream.next()


def test_clients_leave_the_fanout_when_they_go(
    app: Starlette, base_url: str, client: httpx.Client, secrets: dict[str, str]
):
    url = f"{base_url}/events?token={secrets['admin']}"
    with sse(client, url), sse(client, url), sse(client, url):
        _wait_for_members(app, 3)
    _wait_for_members(app, 0)


def test_a_client_behind_its_queue_catches_up_with_no_gap(
    bus_config: Config,
    publisher: EmbeddedPublisher,
    sender: Sender,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
):
    # A queue of 20: a burst of 300 overflows it, and the stream goes on from
    # the journal, then back on the fan-out.
    app = create_app(bus_config, settings=Settings(queue_size=20, batch=3))
    caplog.set_level(logging.INFO, logger="saltbus.http")
    with serve(app) as url, sse(client, f"{url}/events?tag=burst/") as stream:
        _wait_for_members(app, 1)
        for n in range(300):
            sender.fire("burst/x", {"n": n})
        got = stream.take(300)
        sender.fire("burst/end", {})
        assert stream.next().event == "burst/end"
    assert [m.json()["data"]["n"] for m in got] == list(range(300))
    ids = [int(m.id or 0) for m in got]
    assert ids == list(range(ids[0], ids[0] + 300))
    assert "fell behind; it catches up from the journal" in caplog.text


def test_a_revoked_token_loses_even_a_busy_stream(
    app: Starlette,
    base_url: str,
    client: httpx.Client,
    sender: Sender,
    tmp_path: Path,
    secrets: dict[str, str],
):
    with sse(client, f"{base_url}/events?tag=busy/", headers=bearer(secrets["admin"])) as stream:
        _wait_for_members(app, 1)
        TokenStore.open(tmp_path / "tokens.json").revoke("admin")
        deadline = time.monotonic() + 10
        with pytest.raises(EOFError):
            while time.monotonic() < deadline:  # never idle for a heartbeat
                sender.fire("busy/x", {})
                stream.next()
                time.sleep(0.01)
