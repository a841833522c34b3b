"""The mqtt returner against a real mosquitto with credentials and
persistence: the tag as topic under a prefix, QoS 1 acknowledged, refused
credentials reported, and 10,000 events through a `saltbus serve` killed in
the middle, and through one whose mosquitto is stopped in the middle and
started again, to a subscriber with a persistent session (at least once;
every event there, in order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config
from saltbus.client.admin import fetch_stats
from saltbus.errors import ConfigError
from saltbus.returners.mqtt import MqttReturner
from tests.returners_support import write_config
from tests.serve_support import ServeProcess
from tests.sinks_support import (
    MQTT_PASSWORD,
    MQTT_USER,
    WAIT,
    Fired,
    Mosquitto,
    Subscriber,
    gaps,
    mosquitto_server,
)
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[Mosquitto]:
    with mosquitto_server() as running:
        yield running


def options(server: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {"port": server.port, "username": MQTT_USER, "password": MQTT_PASSWORD, **extra}


def event(seq: int, tag: str) -> dict[str, Any]:
    return {"tag": tag, "data": {"n": seq}, "seq": seq, "time": 1700000000.5}


def test_published_under_the_tag_and_acknowledged(server: Mosquitto):
    sub = Subscriber(server.port, "pfx/#")
    ret = MqttReturner(options(server, prefix="pfx/", master_id="m1"))
    try:
        ret.event_return([event(1, "salt/job/1/ret"), event(2, "odd/+/#")])
        wait_until(lambda: len(sub.payloads()) == 2, "the messages", WAIT)
    finally:
        ret.close()
        sub.close()
    (topic1, body1), (topic2, _) = sub.payloads()
    assert (topic1, topic2) == ("pfx/salt/job/1/ret", "pfx/odd/_/_")
    assert json.loads(body1) == {
        "tag": "salt/job/1/ret",
        "data": {"n": 1},
        "seq": 1,
        "time": 1700000000.5,
        "master_id": "m1",
    }


def test_wrong_credentials_are_an_error(server: Mosquitto):
    ret = MqttReturner(options(server, password="wrong", timeout=5))
    try:
        with pytest.raises(ConnectionError, match="refused"):
            ret.event_return([event(1, "a/b")])
    finally:
        ret.close()


@pytest.mark.parametrize(
    ("opts", "message"),
    [({"colour": 1}, "unknown options"), ({"qos": 3}, "qos must be 0, 1 or 2")],
)
def test_bad_options(opts: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        MqttReturner(opts)


def test_ten_thousand_events_through_a_killed_serve(
    server: Mosquitto, bus_config: Config, tmp_path: Path
):
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": "bus-mqtt",
            "event_return": "mqtt",
            "event_return_queue": 200,
            "event_return_queue_max_seconds": 0.1,
            "returner_options": {"mqtt": options(server)},
        },
    )
    fired = Fired(bus_config)
    sub = Subscriber(server.port, "saltbus/#")
    try:

        def seqs() -> list[int]:
            return [json.loads(body)["seq"] for _, body in sub.payloads()]

        serve = ServeProcess(bus_config, "--config", str(config_file))
        try:
            fired.fire(5000)
            wait_until(lambda: len(seqs()) > 0, "the first messages", WAIT)
            serve.kill()
        finally:
            serve.close()
        with ServeProcess(bus_config, "--config", str(config_file)):
            fired.fire(5000)
            wait_until(lambda: fired.last_seq in seqs(), "the last event", WAIT)
            assert fetch_stats(bus_config)["returners"][0]["lag"] == 0
        got = [json.loads(body) for _, body in sub.payloads()]
    finally:
        sub.close()
    firsts = list(dict.fromkeys(e["seq"] for e in got))
    assert len(firsts) == 10_000 and firsts == sorted(firsts), "an event is missing or reordered"
    assert list(dict.fromkeys(e["data"]["n"] for e in got)) == list(range(1, 10_001))


def test_ten_thousand_events_through_a_mosquitto_restart(
    server: Mosquitto, bus_config: Config, tmp_path: Path
):
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": "bus-mqtt-restart",
            "event_return": "mqtt",
            "event_return_queue": 200,
            "event_return_queue_max_seconds": 0.1,
            "event_return_retry_max_seconds": 0.5,
            "returner_options": {"mqtt": options(server, prefix="restart/", timeout=5)},
        },
    )
    fired = Fired(bus_config)
    # Connected before the restart, with a persistent session: the broker
    # keeps the session and the messages queued for it through the restart,
    # and the subscriber reconnects by itself.
    sub = Subscriber(server.port, "restart/#", client_id="sbtest-persistent")
    try:

        def seqs() -> list[int]:
            return [json.loads(body)["seq"] for _, body in sub.payloads()]

        with ServeProcess(bus_config, "--config", str(config_file)):
            fired.fire(4000)
            wait_until(lambda: len(seqs()) > 1000, "the first messages", WAIT)
            # Behind when the broker stops: what it has not taken is queued
            # in its session (and in flight to it, unacknowledged).
            sub.pause()
            wait_until(
                lambda: fetch_stats(bus_config)["returners"][0]["cursor"] >= 3000,
                "3000 events acknowledged by the broker",
                WAIT,
            )
            server.stop()  # by pid, maybe in the middle of a batch
            try:
                fired.fire(3000)  # the bus goes on while mosquitto is down
                wait_until(
                    lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 1,
                    "failures",
                    WAIT,
                )
            finally:
                server.start()
                sub.resume()
            fired.fire(3000)
            wait_until(lambda: fired.last_seq in seqs(), "the last event", WAIT)
            (stats,) = fetch_stats(bus_config)["returners"]
            assert stats["lag"] == 0
        got = [json.loads(body) for _, body in sub.payloads()]
    finally:
        sub.close()
    firsts = list(dict.fromkeys(e["seq"] for e in got))
    assert len(firsts) == 10_000 and firsts == sorted(firsts), gaps(firsts)
    assert list(dict.fromkeys(e["data"]["n"] for e in got)) == list(range(1, 10_001))
    print(f"duplicates after the mosquitto restart: {len(got) - len(firsts)}")  # at least once
