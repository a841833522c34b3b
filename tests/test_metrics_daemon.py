"""``saltbus serve --metrics``: a real Prometheus scrapes the daemon, and the
counters it stores match the events the test fired; /readyz follows the
journal's disk filling up and being freed, and a returner's database going
down and coming back."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from saltbus.client import Listener, Sender
from saltbus.config import Config
from tests.disk_support import fill, fire_until_refused, small_disk
from tests.prometheus_support import WAIT, http_get, prometheus
from tests.returners_support import postgres_server, write_config
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until


def metrics_url(daemon: ServeProcess) -> str:
    daemon.wait_for_log("/metrics (and /healthz, /readyz)")
    match = re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", daemon.log)
    assert match, daemon.log
    return match.group(1)


def test_prometheus_scrapes_the_bus_counters(
    serves: Callable[..., ServeProcess], bus_config: Config, tmp_path: Path
) -> None:
    daemon = serves(bus_config, *bus_flags(bus_config), "--metrics", "127.0.0.1:0")
    url = metrics_url(daemon)
    fired = 7
    with Listener(bus_config, resume=False) as listener:
        listener.connect(timeout=5)
        with Sender(bus_config) as sender:
            for n in range(fired):
                sender.fire("test/metrics", {"n": n}, timeout=5, ack=True)
        received = [listener.receive(timeout=5) for _ in range(fired)]
        assert all(event is not None for event in received)

        with prometheus(tmp_path / "prom", {"saltbus": url.removeprefix("http://")}) as prom:
            prom.wait_for('up{job="saltbus"}', 1)
            prom.wait_for("saltbus_events_received_total", fired)
            prom.wait_for("saltbus_events_delivered_total", fired)
            prom.wait_for("saltbus_journal_last_seq", fired)
            prom.wait_for("saltbus_subscribers", 1)
            prom.wait_for("saltbus_journal_up", 1)
            prom.wait_for('saltbus_events_refused_total{reason="journal_unavailable"}', 0)
            prom.wait_for("saltbus_subscriber_dropped_total", 0)
            # Acked fires are committed one by one here: one commit each at least.
            commits = prom.scalar("saltbus_journal_commit_seconds_count")
            assert commits is not None and commits >= 1
            size = prom.scalar("saltbus_journal_bytes")
            assert size is not None and size > 0

    # The listener is gone: what it was delivered still counts.
    status, body = http_get(f"{url}/metrics")
    assert status == 200
    assert f"saltbus_events_delivered_total {float(fired)}" in body
    assert "saltbus_subscribers 0.0" in body


def test_readyz_is_503_while_the_journal_disk_is_full(
    serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    with small_disk(sock_dir, 8) as disk:
        config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": disk})
        daemon = serves(config, *bus_flags(config), "--metrics", "127.0.0.1:0")
        url = metrics_url(daemon)
        status, body = http_get(f"{url}/readyz")
        assert status == 200, body
        assert json.loads(body)["ready"] is True

        filler = fill(disk, leave=300_000)
        sender = Sender(config)
        fire_until_refused(sender, "test/fill")

        status, body = http_get(f"{url}/readyz")
        assert status == 503, body
        answer = json.loads(body)
        assert answer["ready"] is False
        assert answer["failed"] == ["journal"]
        journal = next(c for c in answer["checks"] if c["name"] == "journal")
        assert "disk full" in journal["detail"]
        assert http_get(f"{url}/healthz")[0] == 200
        metrics = http_get(f"{url}/metrics")[1]
        assert "saltbus_journal_up 0.0" in metrics
        assert 'saltbus_events_refused_total{reason="journal_unavailable"} 1.0' in metrics

        filler.unlink()
        wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, "/readyz to be 200 again", WAIT)
        sender.fire("test/after", {}, 5, ack=True)
        sender.close()
        assert "saltbus_journal_up 1.0" in http_get(f"{url}/metrics")[1]


def test_reactions_are_counted_by_reaction_and_outcome(
    serves: Callable[..., ServeProcess], bus_config: Config, tmp_path: Path
) -> None:
    (tmp_path / "go.sls").write_text(
        "announce:\n  event.send: [{tag: 'went/{{ data.n }}'}]\n"
        "broken:\n  cmd.run:\n    - cmd: [sh, -c, 'exit 7']\n"
    )
    conf = tmp_path / "reactor.conf"
    conf.write_text("reactor:\n  - 'go/*': [go.sls]\n")
    daemon = serves(
        bus_config, *bus_flags(bus_config), "--config", str(conf), "--metrics", "127.0.0.1:0"
    )
    url = metrics_url(daemon)
    with Listener(bus_config, "saltbus/reactor/", resume=False) as reports:
        reports.connect(timeout=5)
        with Sender(bus_config) as sender:
            for n in range(2):
                sender.fire(f"go/{n}", {"n": n}, timeout=5, ack=True)
        done = [reports.receive(timeout=30) for _ in range(4)]
        assert all(event is not None for event in done), done

    def reactions() -> dict[str, float]:
        found = re.findall(
            r'^saltbus_reactor_reactions_total\{outcome="(\w+)",reaction="(\w+)"\} (\S+)$',
            http_get(f"{url}/metrics")[1],
            re.MULTILINE,
        )
        return {f"{reaction}:{outcome}": float(value) for outcome, reaction, value in found}

    assert reactions() == {"announce:succeeded": 2.0, "broken:failed": 2.0}
    assert "saltbus_reactor_queue_events 0.0" in http_get(f"{url}/metrics")[1]


def test_readyz_is_503_while_a_returners_database_is_down(
    serves: Callable[..., ServeProcess], bus_config: Config, tmp_path: Path
) -> None:
    with postgres_server() as pg:
        config_file = write_config(
            tmp_path / "master",
            {
                "event_return": "pgjsonb",
                "event_return_queue_max_seconds": 0.1,
                "event_return_retry_max_seconds": 0.5,
                "returner_options": {"pgjsonb": pg.options(table="readyz")},
            },
        )
        daemon = serves(
            bus_config,
            *bus_flags(bus_config),
            "--config",
            str(config_file),
            "--metrics",
            "127.0.0.1:0",
        )
        url = metrics_url(daemon)
        with Sender(bus_config) as sender:
            sender.fire("app/evt", {"n": 0}, timeout=5, ack=True)
            returned = 'saltbus_returner_returned_events_total{returner="pgjsonb"} 1.0'
            wait_until(lambda: returned in http_get(f"{url}/metrics")[1], "the first return", WAIT)
            assert http_get(f"{url}/readyz")[0] == 200
            pg.stop()
            try:
                sender.fire("app/evt", {"n": 1}, timeout=5, ack=True)
                wait_until(lambda: http_get(f"{url}/readyz")[0] == 503, "/readyz to fail", WAIT)
                answer = json.loads(http_get(f"{url}/readyz")[1])
                assert answer["failed"] == ["returner:pgjsonb"]
                metrics = http_get(f"{url}/metrics")[1]
                assert 'saltbus_returner_up{returner="pgjsonb"} 0.0' in metrics
                assert 'saltbus_returner_lag_events{returner="pgjsonb"} 1.0' in metrics
            finally:
                pg.start()
            wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, "/readyz to be 200 again", WAIT)
        metrics = http_get(f"{url}/metrics")[1]
        assert 'saltbus_returner_lag_events{returner="pgjsonb"} 0.0' in metrics
        assert 'saltbus_returner_returned_events_total{returner="pgjsonb"} 2.0' in metrics


def test_a_bad_or_taken_metrics_address_stops_serve_with_one_line(bus_config: Config) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address, message in (
            ("localhost", "metrics address 'localhost' is not HOST:PORT"),
            (f"127.0.0.1:{port}", f"cannot serve metrics on 127.0.0.1:{port}"),
        ):
            result = subprocess.run(
                [str(SALTBUS), "serve", *bus_flags(bus_config), "--metrics", address],
                capture_output=True,
                text=True,
                timeout=30,
                env=clean_env(),
                check=False,
            )
            assert result.returncode == 2
            assert result.stderr.startswith(f"saltbus: error: {message}"), result.stderr
            assert len(result.stderr.splitlines()) == 1, result.stderr
            # Nothing was left serving: the bus's sockets are gone.
            assert not Path(bus_config.pub_address).exists()
