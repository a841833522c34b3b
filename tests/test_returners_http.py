"""The http returner against a real HTTP server the test runs: NDJSON,
Elasticsearch _bulk and Splunk HEC bodies; 500s, then a 429 with
Retry-After, then a 400 for one batch under `saltbus serve` (killed in the
middle): nothing lost, the 400 batch in the dead-letter file."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config
from saltbus.client.admin import fetch_stats
from saltbus.errors import ConfigError
from saltbus.returners.http import HttpRetryError, HttpReturner
from tests.returners_support import write_config
from tests.serve_support import ServeProcess
from tests.sinks_support import WAIT, Fired
from tests.waiting import wait_until

# What the server answers a request: (status, headers, body).
Answer = tuple[int, dict[str, str], bytes]


class Endpoint:
    """A real HTTP server on an ephemeral loopback port; ``answer`` decides
    each response from the request number and body; accepted bodies are kept."""

    def __init__(self, answer: Callable[[int, bytes], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with endpoint.lock:
                    status, headers, reply = endpoint.answer(len(endpoint.requests), body)
                    endpoint.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[bytes]:
        with self.lock:
            return [body for _, body, status in self.requests if 200 <= status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def ok_endpoint() -> Iterator[Endpoint]:
    endpoint = Endpoint(lambda n, body: (200, {}, b'{"errors":false}'))
    yield endpoint
    endpoint.close()


def event(seq: int, tag: str = "salt/job/1/ret") -> dict[str, Any]:
    return {"tag": tag, "data": {"n": seq}, "seq": seq, "time": 1700000000.5}


def test_ndjson(ok_endpoint: Endpoint, tmp_path: Path):
    ret = HttpReturner(
        {
            "url": ok_endpoint.url,
            "master_id": "m1",
            "headers": {"X-Env": "test"},
            "dead_letter": str(tmp_path / "dl"),
        }
    )
    ret.event_return([event(1), event(2)])
    ((headers, body, _),) = ok_endpoint.requests
    assert headers["Content-Type"] == "application/x-ndjson" and headers["X-Env"] == "test"
    assert [json.loads(line) for line in body.splitlines()] == [
        {
            "tag": "salt/job/1/ret",
            "data": {"n": n},
            "seq": n,
            "time": 1700000000.5,
            "master_id": "m1",
        }
        for n in (1, 2)
    ]


def test_elasticsearch_bulk_ids_and_index(ok_endpoint: Endpoint, tmp_path: Path):
    ret = HttpReturner(
        {
            "url": ok_endpoint.url,
            "format": "elasticsearch",
            "index": "salt-{prefix}-{date}",
            "master_id": "m1",
            "username": "u",
            "password": "p",
            "dead_letter": str(tmp_path / "d"),
        }
    )
    ret.event_return([event(7)])
    ((headers, body, _),) = ok_endpoint.requests
    action, doc = (json.loads(line) for line in body.splitlines())
    assert action == {"index": {"_index": "salt-salt-2023.11.14", "_id": "m1-7"}}
    assert doc["data"] == {"n": 7}
    assert headers["Authorization"] == "Basic dTpw"


def test_bulk_items_refused_go_to_the_dead_letter_file(tmp_path: Path):
    answer = {
        "errors": True,
        "items": [
            {"index": {"status": 201}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
        ],
    }
    endpoint = Endpoint(lambda n, body: (200, {}, json.dumps(answer).encode()))
    try:
        dead = tmp_path / "dl.jsonl"
        ret = HttpReturner(
            {"url": endpoint.url, "format": "elasticsearch", "dead_letter": str(dead)}
        )
        ret.event_return([event(1), event(2)])
    finally:
        endpoint.close()
    (line,) = dead.read_text().splitlines()
    assert json.loads(line)["event"]["seq"] == 2 and json.loads(line)["status"] == 400


def test_splunk_hec(ok_endpoint: Endpoint, tmp_path: Path):
    ret = HttpReturner(
        {
            "url": ok_endpoint.url,
            "format": "splunk",
            "token": "abc",
            "master_id": "m1",
            "dead_letter": str(tmp_path / "d"),
        }
    )
    ret.event_return([event(3)])
    ((headers, body, _),) = ok_endpoint.requests
    assert headers["Authorization"] == "Splunk abc"
    hec = json.loads(body)
    assert hec["host"] == "m1" and hec["time"] == 1700000000.5 and hec["event"]["seq"] == 3


def test_429_carries_retry_after(tmp_path: Path):
    endpoint = Endpoint(lambda n, body: (429, {"Retry-After": "7"}, b""))
    try:
        ret = HttpReturner({"url": endpoint.url, "dead_letter": str(tmp_path / "d")})
        with pytest.raises(HttpRetryError) as raised:
            ret.event_return([event(1)])
    finally:
        endpoint.close()
    assert raised.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://x"}, "url must be"),
        ({"url": "http://x", "format": "xml"}, "format must be one of"),
        ({"url": "http://x", "format": "splunk"}, "needs token"),
        ({"url": "http://x", "colour": 1}, "unknown options"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        HttpReturner(options)


def test_ten_thousand_events_through_500s_a_429_a_400_and_a_killed_serve(
    bus_config: Config, tmp_path: Path
):
    refused_n = 2500

    def answer(number: int, body: bytes) -> Answer:
        if number < 2:
            return 500, {}, b"down"
        if number == 2:
            return 429, {"Retry-After": "1"}, b"slow down"
        if any(json.loads(line)["data"]["n"] == refused_n for line in body.splitlines()):
            return 400, {}, b"bad batch"
        return 200, {}, b""

    endpoint = Endpoint(answer)
    dead = tmp_path / "dead.jsonl"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": "bus-http",
            "event_return": "http",
            "event_return_queue": 250,
            "event_return_queue_max_seconds": 0.1,
            "event_return_retry_max_seconds": 0.2,
            "returner_options": {"http": {"url": endpoint.url, "dead_letter": str(dead)}},
        },
    )
    fired = Fired(bus_config)

    def received() -> list[dict[str, Any]]:
        return [json.loads(line) for body in endpoint.accepted() for line in body.splitlines()]

    try:
        serve = ServeProcess(bus_config, "--config", str(config_file))
        try:
            fired.fire(5000)
            wait_until(lambda: len(received()) > 0, "the first accepted batch", WAIT)
            serve.kill()
        finally:
            serve.close()
        with ServeProcess(bus_config, "--config", str(config_file)):
            fired.fire(5000)
            wait_until(lambda: fired.last_seq in [e["seq"] for e in received()], "the end", WAIT)
            (stats,) = fetch_stats(bus_config)["returners"]
            assert stats["lag"] == 0 and stats["details"]["dead_lettered"] > 0
        statuses = [status for _, _, status in endpoint.requests]
    finally:
        endpoint.close()
    assert statuses[:4] == [500, 500, 429, statuses[3]] and 400 in statuses
    set_aside = [json.loads(line)["event"] for line in dead.read_text().splitlines()]
    assert refused_n in [e["data"]["n"] for e in set_aside]
    got = list(dict.fromkeys(e["data"]["n"] for e in received() + set_aside))
    assert sorted(got) == list(range(1, 10_001)), "an event was lost"
    accepted = list(dict.fromkeys(e["seq"] for e in received()))
    assert accepted == sorted(accepted), "accepted out of order"
