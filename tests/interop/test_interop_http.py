"""The HTTP bridge in front of Salt's own publisher, every generation.

Salt numbers nothing: the stream has no ``id:`` lines, a resume point is
ignored (live events only), POST /events answers ``seq: null`` (Salt never
acknowledges, so the bridge fires plainly), and hooks fire as salt-api's.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from saltbus.config import Config
from saltbus.http import SALT_HOOK_PREFIX, create_app
from tests.http_support import SseMessage, SseReader, serve, sse
from tests.interop.salt_peer_client import SALT_VERSIONS, salt_publisher

WAIT = 15.0


def _first_through(client: httpx.Client, url: str, stream: SseReader) -> SseMessage:
    """Fire probes until one comes out: Salt's publisher takes a moment to
    start sending to a new subscriber, and drops what comes before."""
    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, "nothing came through the bridge"
        answer = client.post(f"{url}/events", json={"tag": "probe/x", "data": {}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["seq"] is None
        message = stream.next()
        if message.event == "probe/x":
            return message


@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_the_bridge_in_front_of_salts_publisher(version: str, sock_dir: Path):
    config = Config.load(env={}, overrides={"sock_dir": sock_dir, "salt_version": version})
    app = create_app(config, hook_prefix=SALT_HOOK_PREFIX)
    with (
        salt_publisher(version, sock_dir),
        serve(app) as url,
        httpx.Client(timeout=WAIT) as client,
        # A resume point means nothing to a Salt bus: the stream is live.
        sse(client, f"{url}/events", headers={"Last-Event-ID": "5"}) as stream,
    ):
        probe = _first_through(client, url, stream)
        assert probe.id is None
        fired = client.post(f"{url}/events", json={"tag": "app/deploy", "data": {"v": 1}})
        assert fired.json() == {"success": True, "tag": "app/deploy", "seq": None}
        hooked = client.post(f"{url}/hook/github", json={"ref": "main"})
        # As POST /events: the tag, and no seq from a Salt publisher.
        assert hooked.json() == {"success": True, "tag": "salt/netapi/hook/github", "seq": None}
        messages = [stream.next() for _ in range(2)]
    deploy, hook = messages
    assert deploy.event == "app/deploy" and deploy.id is None
    assert deploy.json()["data"]["v"] == 1 and "_stamp" in deploy.json()["data"]
    assert hook.event == "salt/netapi/hook/github"
    assert hook.json()["data"]["post"] == {"ref": "main"}
