"""The redis_stream returner against a real redis-server: XADD in order, a
retried batch added once, a batch sent while a restarted Redis is still
loading its AOF added whole, MAXLEN ~ trimming, and 10,000 events through a
`saltbus serve` killed in the middle, with Redis down for a while."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from saltbus import Config
from saltbus.client.admin import fetch_stats
from saltbus.errors import ConfigError
from saltbus.returners.redis_stream import RedisStreamReturner
from tests.returners_support import free_port, write_config
from tests.serve_support import ServeProcess
from tests.sinks_support import WAIT, Fired, RedisServer, redis_server
from tests.waiting import wait_until

# The restart's loading, slowed to about a second: every key of the AOF's base
# takes this long, and between two keys (one KB each) Redis answers clients,
# LOADING to XADD. A batch of 10 MB is then still being read when loading
# ends: its first XADDs are refused, the rest are executed.
LOAD_KEYS = 20
KEY_LOAD_DELAY_US = 50_000
SLOW_LOADING = (
    "--key-load-delay",
    str(KEY_LOAD_DELAY_US),
    "--loading-process-events-interval-bytes",
    "1024",
)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis(port=server.port, decode_responses=True)
    conn.flushall()
    yield conn
    conn.close()


def event(seq: int, tag: str = "app/evt") -> dict[str, Any]:
    return {"tag": tag, "data": {"n": seq}, "seq": seq, "time": 1700000000.5}


def entries(client: redis.Redis, stream: str = "saltbus:events") -> list[dict[str, Any]]:
    return [{"id": i, **fields} for i, fields in client.xrange(stream)]


def test_events_in_order_and_a_retried_batch_once(server: RedisServer, client: redis.Redis):
    ret = RedisStreamReturner({"port": server.port, "master_id": "m1"})
    try:
        ret.event_return([event(1), event(2)])
        ret.event_return([event(2), event(3)])  # the answer to the first attempt was lost
    finally:
        ret.close()
    got = entries(client)
    assert [e["id"] for e in got] == ["1-0", "2-0", "3-0"]
    assert got[0] == {
        "id": "1-0",
        "tag": "app/evt",
        "data": '{"n":1}',
        "seq": "1",
        "time": "1700000000.5",
        "master_id": "m1",
    }
    assert ret.stats() == {"duplicates": 1, "lost": 0}


def test_a_refused_event_not_in_the_stream_is_counted_lost(
    server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
):
    # Another writer on the stream (or a journal started again): 1-0 is some
    # other event, 2-0 is not there, and the top is above both.
    client.xadd("saltbus:events", {"tag": "other", "data": "{}"}, id="1-0")
    client.xadd("saltbus:events", {"tag": "other", "data": "{}"}, id="100-0")
    ret = RedisStreamReturner({"port": server.port, "master_id": "m1"})
    try:
        with caplog.at_level(logging.ERROR, "saltbus.returners"):
            ret.event_return([event(1), event(2)])
            ret.event_return([event(101)])
    finally:
        ret.close()
    assert ret.stats() == {"duplicates": 0, "lost": 2}
    assert "2 events (ids 1-0..2-0) refused" in caplog.text
    assert [e["id"] for e in entries(client)] == ["1-0", "100-0", "101-0"]


def test_a_refused_event_trimmed_since_is_a_duplicate(server: RedisServer, client: redis.Redis):
    ret = RedisStreamReturner({"port": server.port, "maxlen": 1000})
    try:
        ret.event_return([event(s) for s in range(1, 11)])
        client.xtrim(
            "saltbus:events", minid="5-0", approximate=False
        )  # trimmed before the retry came
        ret.event_return([event(s) for s in range(1, 13)])
    finally:
        ret.close()
    assert ret.stats() == {"duplicates": 10, "lost": 0}
    assert [e["id"] for e in entries(client)] == [f"{s}-0" for s in range(5, 13)]


def test_a_batch_sent_while_a_restarted_redis_loads_is_added_whole(tmp_path: Path):
    """Issue 20: the old pipeline (no MULTI) lost the head of such a batch.
    The XADDs answered LOADING were not added, the later ones were; the
    retry then found the head's ids below the stream's top and counted them
    as duplicates of an earlier attempt."""
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        conn = redis.Redis(port=server.port, decode_responses=True)
        for key in range(LOAD_KEYS):
            conn.set(f"k{key}", os.urandom(1024))  # incompressible: a KB each in the base
        conn.bgrewriteaof()
        wait_until(
            lambda: (
                conn.info("persistence")["aof_rewrites"] == 1
                and not conn.info("persistence")["aof_rewrite_in_progress"]
            ),
            "the AOF's base rewritten",
        )
        conn.close()
        server.stop()
        server.start(*SLOW_LOADING, ready=False)
        probe = redis.Redis(port=server.port, decode_responses=True, retry=None)

        def loading() -> bool:
            try:
                return bool(probe.info("persistence")["loading"])
            except redis.ConnectionError:
                return False  # not listening yet

        wait_until(loading, "redis-server loading its AOF", WAIT)
        ret = RedisStreamReturner({"port": server.port, "socket_timeout": 10, "master_id": "m"})
        batch = [
            {"tag": "app/evt", "data": {"n": seq, "pad": "p" * 10_000}, "seq": seq, "time": 1.5}
            for seq in range(1, 1001)
        ]
        try:
            for _attempt in range(20):  # as the worker does: the same batch again
                try:
                    ret.event_return(batch)
                    break
                except redis.RedisError:
                    time.sleep(0.5)
            else:
                pytest.fail("the batch was never returned")
        finally:
            ret.close()
        assert probe.info("errorstats")["errorstat_LOADING"]["count"] > 0  # it did meet LOADING
        ids = [entry_id for entry_id, _ in probe.xrange("saltbus:events")]
        probe.close()
        missing = sorted(set(range(1, 1001)) - {int(i.split("-")[0]) for i in ids})
        assert missing == []
        assert ids == [f"{seq}-0" for seq in range(1, 1001)]
    finally:
        server.stop()


def test_stream_template_and_auto_ids(server: RedisServer, client: redis.Redis):
    ret = RedisStreamReturner(
        {
            "url": f"redis://127.0.0.1:{server.port}/0",
            "stream": "ev:{master_id}:{prefix}",
            "ids": "auto",
            "master_id": "m2",
        }
    )
    try:
        ret.event_return([event(1, "salt/job/1/ret"), event(2, "app/x"), event(3, "salt/auth")])
    finally:
        ret.close()
    assert [json.loads(e["data"])["n"] for e in entries(client, "ev:m2:salt")] == [1, 3]
    assert [e["tag"] for e in entries(client, "ev:m2:app")] == ["app/x"]


def test_maxlen_trims_about_there(server: RedisServer, client: redis.Redis):
    ret = RedisStreamReturner({"port": server.port, "maxlen": 100})
    try:
        for start in range(1, 2001, 200):
            ret.event_return([event(s) for s in range(start, start + 200)])
    finally:
        ret.close()
    assert 100 <= client.xlen("saltbus:events") < 2000


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, "unknown options"),
        ({"stream": "x:{nope}"}, "stream template"),
        ({"maxlen": -1}, "maxlen must be 0 or more"),
        ({"ids": "mine"}, "ids must be seq or auto"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        RedisStreamReturner(options)


def test_ten_thousand_events_through_a_killed_serve_and_a_redis_outage(
    server: RedisServer, client: redis.Redis, bus_config: Config, tmp_path: Path
):
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "event_return": "redis_stream",
            "event_return_queue": 200,
            "event_return_queue_max_seconds": 0.1,
            "event_return_retry_max_seconds": 0.5,
            "returner_options": {"redis_stream": {"port": server.port, "socket_timeout": 2}},
        },
    )
    fired = Fired(bus_config)

    def stored() -> int:
        return int(client.xlen("saltbus:events"))

    serve = ServeProcess(bus_config, "--config", str(config_file))
    try:
        fired.fire(4000)
        wait_until(lambda: stored() > 0, "the first entries", WAIT)
        serve.kill()  # SIGKILL, maybe between an XADD and the cursor
    finally:
        serve.close()
    with ServeProcess(bus_config, "--config", str(config_file)):
        wait_until(lambda: stored() == 4000, "the events before the kill", WAIT)
        server.stop()
        try:
            fired.fire(3000)  # the bus goes on while Redis is down
            wait_until(
                lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 1, "failures", WAIT
            )
        finally:
            server.start()
        fired.fire(3000)
        wait_until(lambda: stored() == 10_000, "every event in Redis", WAIT)
        (stats,) = fetch_stats(bus_config)["returners"]
        assert stats["lag"] == 0
    got = entries(client)
    assert [json.loads(e["data"])["n"] for e in got] == list(range(1, 10_001))
    assert got[-1]["id"] == f"{fired.last_seq}-0"
