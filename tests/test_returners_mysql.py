"""The mysql returner against a real MariaDB: Salt's table, Salt's keys, a
retried batch inserted once, an existing Salt table upgraded, and 10,000
events through a `saltbus serve` killed in the middle, with MariaDB down for
a while."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config
from saltbus.client.admin import fetch_stats
from saltbus.config import Config as Settings
from saltbus.errors import ConfigError
from saltbus.returners.mysql import MysqlReturner
from tests.returners_support import write_config
from tests.serve_support import ServeProcess
from tests.sinks_support import WAIT, Fired, MariaDB, mariadb_server
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDB]:
    with mariadb_server() as running:
        yield running


def rows(server: MariaDB, table: str = "salt_events") -> list[tuple[Any, ...]]:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT seq, tag, data, master_id, UNIX_TIMESTAMP(alter_time) FROM {table} "
                "ORDER BY id"
            )
            return list(cur.fetchall())
    finally:
        conn.close()


def event(seq: int) -> dict[str, Any]:
    return {"tag": "app/evt", "data": {"n": seq, "x": "é"}, "seq": seq, "time": 1700000000.0}


def test_batches_salts_columns_and_a_retry_once(server: MariaDB):
    ret = MysqlReturner(server.options(table="t_retry", master_id="m1"))
    try:
        ret.event_return([event(1), event(2)])
        ret.event_return([event(2), event(3)])  # the commit's answer was lost
    finally:
        ret.close()
    got = rows(server, "t_retry")
    assert [r[0] for r in got] == [1, 2, 3]
    assert (got[0][1], json.loads(got[0][2]), *got[0][3:]) == (
        "app/evt",
        {"n": 1, "x": "é"},
        "m1",
        1700000000,
    )


def test_an_existing_salt_table_gets_seq(server: MariaDB):
    conn = server.connect()
    with conn.cursor() as cur:
        # Salt's own schema (salt/returners/mysql.py's documentation).
        cur.execute(
            "CREATE TABLE t_salt (id BIGINT NOT NULL AUTO_INCREMENT, tag VARCHAR(255) NOT NULL,"
            " data MEDIUMTEXT NOT NULL, alter_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,"
            " master_id VARCHAR(255) NOT NULL, PRIMARY KEY (id), KEY tag (tag))"
        )
        cur.execute("INSERT INTO t_salt (tag, data, master_id) VALUES ('old', '{}', 'm')")
    conn.close()
    ret = MysqlReturner(server.options(table="t_salt", master_id="m"))
    try:
        ret.event_return([event(7)])
        ret.event_return([event(7)])
    finally:
        ret.close()
    assert [(r[0], r[1]) for r in rows(server, "t_salt")] == [(None, "old"), (7, "app/evt")]


def test_salts_flat_keys(tmp_path: Path):
    config = Settings.load(
        write_config(
            tmp_path / "master",
            {"event_return": "mysql", "mysql.host": "db1", "mysql.pass": "x", "mysql.port": 3307},
        ),
        env={},
    )
    assert config.returner_options == {"mysql": {"host": "db1", "pass": "x", "port": 3307}}
    ret = MysqlReturner(config.returner_options["mysql"])
    assert ret._params["password"] == "x" and ret._params["port"] == 3307


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, "unknown options"),
        ({"table": "a; DROP"}, "plain table name"),
        ({"port": "x"}, "port and connect_timeout must be numbers"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        MysqlReturner(options)


def test_ten_thousand_events_through_a_killed_serve_and_a_database_outage(
    server: MariaDB, bus_config: Config, tmp_path: Path
):
    settings: dict[str, Any] = {
        "sock_dir": str(bus_config.sock_dir),
        "data_dir": str(bus_config.data_dir),
        "id": "bus-outage",
        "event_return": "mysql",
        "event_return_queue": 500,
        "event_return_queue_max_seconds": 0.1,
        "event_return_retry_max_seconds": 0.5,
        "returner_options": {"mysql": {"table": "outage"}},
    }
    settings.update({f"mysql.{k}": v for k, v in server.options().items()})
    config_file = write_config(tmp_path / "master", settings)
    fired = Fired(bus_config)

    def stored() -> int:
        try:
            return len(rows(server, "outage"))
        except Exception:
            return -1  # the table is not there yet

    serve = ServeProcess(bus_config, "--config", str(config_file))
    try:
        fired.fire(4000)
        wait_until(lambda: stored() > 0, "the first rows", WAIT)
        serve.kill()  # SIGKILL, maybe between a commit and the cursor
    finally:
        serve.close()
    with ServeProcess(bus_config, "--config", str(config_file)):
        wait_until(lambda: stored() == 4000, "the events before the kill", WAIT)
        server.stop()
        try:
            fired.fire(3000)  # the bus goes on while the database is down
            wait_until(
                lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 1, "failures", WAIT
            )
        finally:
            server.start()
        fired.fire(3000)
        wait_until(lambda: stored() == 10_000, "every event in MariaDB", WAIT * 2)
        assert fetch_stats(bus_config)["returners"][0]["lag"] == 0
    got = rows(server, "outage")
    assert [json.loads(r[2])["n"] for r in got] == list(range(1, 10_001))
    assert [r[0] for r in got] == sorted({r[0] for r in got}) and got[-1][0] == fired.last_seq
    assert {r[3] for r in got} == {"bus-outage"}
