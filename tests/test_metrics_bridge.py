"""The HTTP bridge's /metrics, /healthz and /readyz (``saltbus http``), on a
real uvicorn server in front of a real publisher."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.http import TokenStore, create_app
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, make_tokens, serve

WAIT = 30.0


def wait_ready(client: httpx.Client) -> httpx.Response:
    deadline = time.monotonic() + WAIT
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    return response


def test_metrics_need_a_token_and_carry_the_publishers(bus_config: Config, tmp_path: Path) -> None:
    secrets = make_tokens(tmp_path / "tokens.json", reader=(["*"], []))
    app = create_app(bus_config, tokens=TokenStore.open(tmp_path / "tokens.json"))
    with EmbeddedPublisher(bus_config), serve(app) as url, httpx.Client(base_url=url) as client:
        ready = wait_ready(client).json()
        assert [c["name"] for c in ready["checks"]] == ["bus", "sockets", "journal"]
        assert client.get("/healthz").status_code == 200
        with Sender(bus_config) as sender:
            for n in range(4):
                sender.fire("test/bridge", {"n": n}, timeout=5, ack=True)
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers=bearer(secrets["reader"]))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        lines = response.text.splitlines()
        assert "saltbus_http_bus_connected 1.0" in lines
        assert "saltbus_http_clients 0.0" in lines
        assert "saltbus_events_received_total 4.0" in lines


def test_readyz_is_503_without_a_bus(bus_config: Config) -> None:
    app = create_app(bus_config)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["failed"] == ["bus"]
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics")
        assert "saltbus_http_bus_connected 0.0" in metrics.text.splitlines()
