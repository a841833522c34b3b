"""The pgjsonb returner against a real PostgreSQL server (started and stopped
by the ``postgres`` fixture), alone and under `saltbus serve` while the
database is stopped and started again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saltbus import Config, Sender
from saltbus.client.admin import fetch_stats
from saltbus.returners.pgjsonb import PgJsonbReturner
from tests.returners_support import WAIT, Postgres, postgres_server, write_config
from tests.serve_support import ServeProcess
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as pg:
        yield pg


def rows(pg: Postgres, table: str = "salt_events", master_id: str | None = None) -> list[Any]:
    where = "" if master_id is None else " WHERE master_id = %s"
    with pg.connect() as conn:
        return conn.execute(
            f"SELECT seq, tag, data, master_id, alter_time FROM {table}{where} ORDER BY id",
            () if master_id is None else (master_id,),
        ).fetchall()


def event(seq: int, tag: str = "app/evt", **data: Any) -> dict[str, Any]:
    return {"tag": tag, "data": {"n": seq, **data}, "seq": seq, "time": 1_700_000_000.0 + seq}


def test_events_land_in_salts_table_once(postgres: Postgres):
    ret = PgJsonbReturner(postgres.options(master_id="m-once"))
    try:
        ret.event_return([event(1), event(2, "salt/job/1/ret/m1", ok=True)])
        ret.event_return([event(2), event(3)])  # a retried batch: 2 is there already
    finally:
        ret.close()
    got = rows(postgres, master_id="m-once")
    assert [r[0] for r in got] == [1, 2, 3]
    assert got[1][1] == "salt/job/1/ret/m1" and got[1][2] == {"n": 2, "ok": True}
    assert got[0][3] == "m-once"
    assert got[0][4].timestamp() == pytest.approx(1_700_000_001.0)  # when the bus got it
    with postgres.connect() as conn:
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'salt_events' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [
        ("id", "bigint"),
        ("tag", "character varying"),
        ("data", "jsonb"),
        ("alter_time", "timestamp with time zone"),
        ("master_id", "character varying"),
        ("seq", "bigint"),
    ]


def test_two_masters_share_a_table(postgres: Postgres):
    for master in ("m-a", "m-b"):
        ret = PgJsonbReturner(postgres.options(master_id=master, table="shared"))
        ret.event_return([event(1), event(2)])
        ret.close()
    assert len(rows(postgres, "shared")) == 4


def test_a_salt_table_gets_the_seq_column(postgres: Postgres):
    with postgres.connect() as conn:
        conn.execute(
            "CREATE TABLE salt_made (id BIGSERIAL PRIMARY KEY, tag varchar(255) NOT NULL, "
            "data jsonb NOT NULL, alter_time TIMESTAMP WITH TIME ZONE DEFAULT NOW(), "
            "master_id varchar(255) NOT NULL)"
        )
        conn.execute(
            "INSERT INTO salt_made (tag, data, master_id) "
            "VALUES ('old', '{}', 'm'), ('old', '{}', 'm')"
        )
    ret = PgJsonbReturner(postgres.options(master_id="m", table="salt_made"))
    ret.event_return([event(1), event(1)])
    ret.close()
    assert [(r[0], r[1]) for r in rows(postgres, "salt_made")] == [
        (None, "old"),
        (None, "old"),
        (1, "app/evt"),
    ]


def test_data_json_cannot_carry_is_stored_as_text(postgres: Postgres):
    ret = PgJsonbReturner(postgres.options(master_id="m-odd", table="odd.events"))
    with postgres.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS odd")
    data = {"raw": b"\x00\xff", "nan": float("nan"), "nul": "a\x00b", 7: [1.5, {b"k": None}]}
    ret.event_return([{"tag": "t\x00" + "x" * 300, "data": data, "seq": 1, "time": None}])
    ret.close()
    ((seq, tag, stored, _, when),) = rows(postgres, "odd.events")
    assert seq == 1 and len(tag) == 255 and "\x00" not in tag
    assert stored == {
        "raw": "\ufffd\\xff",
        "nan": "nan",
        "nul": "a\ufffdb",
        "7": [1.5, {"k": None}],
    }
    assert when is not None


def test_database_down_raises_and_the_returner_reconnects(postgres: Postgres):
    ret = PgJsonbReturner(postgres.options(master_id="m-down"))
    try:
        ret.event_return([event(1)])
        postgres.stop()
        try:
            with pytest.raises(psycopg.OperationalError):
                ret.event_return([event(2)])
        finally:
            postgres.start()
        ret.event_return([event(2)])
    finally:
        ret.close()
    assert [r[0] for r in rows(postgres, master_id="m-down")] == [1, 2]


def test_database_stopped_under_saltbus_serve_loses_and_duplicates_nothing(
    postgres: Postgres, bus_config: Config, tmp_path: Path
):
    table, master = "outage", "bus-outage"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": master,
            "event_return": "pgjsonb",
            "event_return_queue": 50,
            "event_return_queue_max_seconds": 0.1,
            "event_return_retry_max_seconds": 1,
            "returner_options": {"pgjsonb": postgres.options(table=table)},
        },
    )
    fired: list[int] = []

    def fire(count: int) -> None:
        with Sender(bus_config) as sender:
            for _ in range(count):
                seq = sender.fire("app/evt", {"n": len(fired)}, timeout=5, ack=True).seq
                assert seq is not None
                fired.append(seq)

    def stored() -> int:
        # The returner creates the table on its first batch: none yet is 0 rows.
        with postgres.connect() as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                return 0
        return len(rows(postgres, table))

    def returner() -> dict[str, Any]:
        stats: dict[str, Any] = fetch_stats(bus_config)["returners"][0]
        return stats

    with ServeProcess(bus_config, "--config", str(config_file)):
        fire(500)
        wait_until(lambda: stored() == 500, "the first events in PostgreSQL", WAIT)
        postgres.stop()
        try:
            fire(1000)  # the bus goes on while the database is down
            wait_until(lambda: returner()["failures"] >= 2, "failures", WAIT)
            assert returner()["lag"] == 1000
            time.sleep(1.0)
        finally:
            postgres.start()
        fire(200)
        wait_until(lambda: stored() == 1700, "the backlog in PostgreSQL", WAIT)
        assert returner()["lag"] == 0
    # Down again, across a restart of the bus.
    postgres.stop()
    try:
        with ServeProcess(bus_config, "--config", str(config_file)):
            fire(300)
            wait_until(lambda: returner()["failures"] >= 1, "failures", WAIT)
    finally:
        postgres.start()
    with ServeProcess(bus_config, "--config", str(config_file)):
        wait_until(lambda: stored() == 2000, "events fired before the restart", WAIT)
    got = rows(postgres, table)
    seqs = [r[0] for r in got]
    assert sorted(seqs) == fired, "an event is missing or duplicated"
    assert [r[2]["n"] for r in sorted(got)] == list(range(2000))
    assert {r[3] for r in got} == {master}
