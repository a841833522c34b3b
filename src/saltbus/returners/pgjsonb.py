"""``pgjsonb``: events into PostgreSQL, in the table of Salt's pgjsonb returner.

Salt's ``salt_events(id, tag, data jsonb, alter_time, master_id)`` plus a
``seq`` column, unique per ``master_id``: a batch retried after a failure
(the commit went through but its answer was lost) inserts nothing twice. An
existing Salt table gets the column and the index added; Salt's own rows
(``seq`` NULL) never conflict.

Options (``returner_options: {pgjsonb: {...}}``, or Salt's flat
``returner.pgjsonb.host`` keys): ``OPTIONS`` below.

``alter_time`` is the time the bus received the event, not the time of the
insert: after an outage the rows still say when things happened.

A batch is COPYed into a temporary table, then inserted from it with
``ON CONFLICT DO NOTHING``, in one transaction: COPY is several times faster
than binding the batch as parameters.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg import sql

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json as _to_json
from saltbus.returners.options import Option, check_known, given, master_id

DEFAULT_TABLE: Final = "salt_events"
TAG_MAX: Final = 255  # VARCHAR(255), as in Salt's table
_SALT: Final = "returner.pgjsonb."
OPTIONS: Final = (
    Option("dsn", "string", "", "a libpq connection string (the options below override it)"),
    Option("host", "string", "libpq's (the local socket)", "the server", _SALT + "host"),
    Option("port", "integer", "5432", "the server's port", _SALT + "port"),
    Option("user", "string", "libpq's (the user's name)", "the role", _SALT + "user"),
    Option("password", "string", "", "the role's password", _SALT + "pass", ("pass",)),
    Option("dbname", "string", "libpq's (the user's name)", "the database", _SALT + "db", ("db",)),
    Option("sslmode", "string", "prefer", "libpq's sslmode", _SALT + "sslmode"),
    Option("sslcert", "path", "", "a client certificate", _SALT + "sslcert"),
    Option("sslkey", "path", "", "the client certificate's key", _SALT + "sslkey"),
    Option("sslrootcert", "path", "", "CA certificates for the server's", _SALT + "sslrootcert"),
    Option("connect_timeout", "seconds", "5", "for connecting"),
    Option("application_name", "string", "saltbus-pgjsonb", "what pg_stat_activity shows"),
    Option("table", "name or schema.name", DEFAULT_TABLE, "Salt's events table"),
    master_id(),
)
_CONNINFO_KEYS: Final = (
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "connect_timeout",
    "application_name",
)
# Salt's names for two of them.
_ALIASES: Final = {"password": "pass", "dbname": "db"}
# Per connection, emptied by every commit (and by every rollback).
_STAGING: Final = "saltbus_pgjsonb_staging"


class PgJsonbReturner:
    """Salt's pgjsonb returner, idempotent per (master_id, seq). Connects on
    first use and again after any error; one transaction per batch."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("pgjsonb", options, OPTIONS)
        params = {
            k: str(v) for k in _CONNINFO_KEYS if (v := given(options, k, _ALIASES)) is not None
        }
        params.setdefault("connect_timeout", "5")
        params.setdefault("application_name", "saltbus-pgjsonb")
        try:
            self.conninfo = psycopg.conninfo.make_conninfo(str(options.get("dsn") or ""), **params)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"pgjsonb: bad connection options: {exc}") from None
        self.master_id = str(options.get("master_id") or socket.gethostname())[:TAG_MAX]
        table = str(options.get("table") or DEFAULT_TABLE)
        parts = table.split(".")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ConfigError(f"pgjsonb: table must be 'name' or 'schema.name', not {table!r}")
        self.table = table
        self._table = sql.Identifier(*parts)
        self._index_prefix = parts[-1][:40]
        self._conn: psycopg.Connection[Any] | None = None

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        rows = [
            (_clean_tag(str(e["tag"])), _to_json(e["data"]), e.get("seq"), e.get("time"))
            for e in events
        ]
        conn = self._connect()
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {_STAGING} (tag, data, seq, time) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(self._insert_sql(), (self.master_id,))
        except BaseException:
            self._disconnect()
            raise

    def close(self) -> None:
        self._disconnect()

    def create_table(self) -> None:
        """Create the table (and its indexes) if missing; add ``seq`` to a Salt table."""
        conn = self._connect()
        try:
            self._create_table(conn)
        except BaseException:
            self._disconnect()
            raise

    # -- helpers --------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo)
            try:
                self._create_table(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        prefix = self._index_prefix
        statements = [
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id BIGSERIAL PRIMARY KEY,"
                " tag VARCHAR(255) NOT NULL,"
                " data JSONB NOT NULL,"
                " alter_time TIMESTAMPTZ DEFAULT NOW(),"
                " master_id VARCHAR(255) NOT NULL,"
                " seq BIGINT)"
            ).format(self._table),
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS seq BIGINT").format(self._table),
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (master_id, seq)").format(
                sql.Identifier(f"{prefix}_master_id_seq_key"), self._table
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (tag)").format(
                sql.Identifier(f"idx_{prefix}_tag"), self._table
            ),
        ]
        with conn.transaction():
            # Two buses creating the same table at once: one waits for the other.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} "
            "(tag TEXT, data TEXT, seq BIGINT, time FLOAT8) ON COMMIT DELETE ROWS"
        )
        conn.commit()

    def _insert_sql(self) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {} (tag, data, master_id, seq, alter_time) "
            "SELECT tag, data::jsonb, %s, seq, COALESCE(to_timestamp(time), NOW()) "
            "FROM {} ORDER BY seq "
            "ON CONFLICT (master_id, seq) DO NOTHING"
        ).format(self._table, sql.Identifier(_STAGING))


def _clean_tag(tag: str) -> str:
    # PostgreSQL text cannot hold NUL; a tag over 255 characters would fail the
    # batch for ever (Salt's column is VARCHAR(255)), so it is cut.
    return tag.replace("\x00", "\ufffd")[:TAG_MAX]
