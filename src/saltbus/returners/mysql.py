"""``mysql``: events into MariaDB or MySQL, in the table of Salt's mysql returner.

Salt's ``salt_events(id, tag, data, alter_time, master_id)`` plus a ``seq``
column with a unique key on ``(master_id, seq)``: a batch retried after a
failure (the commit went through but its answer was lost) inserts nothing
twice. An existing Salt table gets the column and the key added; Salt's own
rows (``seq`` NULL) never conflict.

Options: Salt's flat keys (``mysql.host``, ``mysql.pass``...), or the same
names under ``returner_options: {mysql: {...}}``: ``OPTIONS`` below.

``alter_time`` is when the bus received the event (UTC), not when the row
was inserted. One transaction per batch.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import socket
from collections.abc import Mapping
from typing import Any, Final

import pymysql  # type: ignore[import-untyped]

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known, given, master_id

DEFAULT_TABLE: Final = "salt_events"
TAG_MAX: Final = 255
OPTIONS: Final = (
    Option("host", "string", "localhost", "the server", "mysql.host"),
    Option("port", "integer", "3306", "the server's port", "mysql.port"),
    Option("user", "string", "salt", "the user", "mysql.user"),
    Option("password", "string", "", "the user's password", "mysql.pass", ("pass",)),
    Option("database", "string", "salt", "the database", "mysql.db", ("db",)),
    Option("unix_socket", "path", "", "the server's socket (instead of host)", "mysql.unix_socket"),
    Option("ssl_ca", "path", "", "CA certificates for the server's", "mysql.ssl_ca"),
    Option("ssl_cert", "path", "", "a client certificate", "mysql.ssl_cert"),
    Option("ssl_key", "path", "", "the client certificate's key", "mysql.ssl_key"),
    Option("connect_timeout", "seconds", "5", "for connecting"),
    Option("table", "name", DEFAULT_TABLE, "Salt's events table"),
    master_id(),
)
_CONNECT_KEYS: Final = (
    "host",
    "port",
    "user",
    "password",
    "database",
    "unix_socket",
    "connect_timeout",
)
_SSL_KEYS: Final = {"ssl_ca": "ca", "ssl_cert": "cert", "ssl_key": "key"}
# Salt's names for two of them.
_ALIASES: Final = {"password": "pass", "database": "db"}
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")


class MysqlReturner:
    """Salt's mysql returner, idempotent per (master_id, seq). Connects on
    first use and again after any error."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("mysql", options, OPTIONS)
        self.table = str(options.get("table") or DEFAULT_TABLE)
        if not _NAME.fullmatch(self.table):
            raise ConfigError(f"mysql: table must be a plain table name, not {self.table!r}")
        self.master_id = str(options.get("master_id") or socket.gethostname())[:TAG_MAX]
        params: dict[str, Any] = {
            k: v for k in _CONNECT_KEYS if (v := given(options, k, _ALIASES)) is not None
        }
        params.setdefault("host", "localhost")
        params.setdefault("user", "salt")
        params.setdefault("database", "salt")
        try:
            params["port"] = int(params.get("port", 3306))
            params["connect_timeout"] = float(params.get("connect_timeout", 5))
        except (TypeError, ValueError):
            raise ConfigError("mysql: port and connect_timeout must be numbers") from None
        ssl = {
            name: str(v) for key, name in _SSL_KEYS.items() if (v := options.get(key)) is not None
        }
        if ssl:
            params["ssl"] = ssl
        self._params = params
        self._conn: Any = None

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        rows = [
            (
                str(e["tag"])[:TAG_MAX],
                to_json(e["data"]),
                self.master_id,
                e.get("seq"),
                _utc(e.get("time")),
            )
            for e in events
        ]
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO `{self.table}` (tag, data, master_id, seq, alter_time) "
                    "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE id = id",
                    rows,
                )
            conn.commit()
        except BaseException:
            self._disconnect()
            raise

    def close(self) -> None:
        self._disconnect()

    # -- helpers --------------------------------------------------------------

    def _connect(self) -> Any:
        if self._conn is None:
            conn = pymysql.connect(
                **self._params, charset="utf8mb4", autocommit=False, init_command=_UTC
            )
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
            # Already broken, maybe: that is why it is being dropped.
            with contextlib.suppress(pymysql.Error):
                conn.close()

    def _create_table(self, conn: Any) -> None:
        table = self.table
        with conn.cursor() as cur:
            # Salt's table, with seq; MySQL has no ADD COLUMN IF NOT EXISTS.
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS `{table}` ("
                " id BIGINT NOT NULL AUTO_INCREMENT,"
                " tag VARCHAR(255) NOT NULL,"
                " data MEDIUMTEXT NOT NULL,"
                " alter_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,"
                " master_id VARCHAR(255) NOT NULL,"
                " seq BIGINT NULL,"
                " PRIMARY KEY (id), KEY tag (tag),"
                " UNIQUE KEY master_id_seq (master_id, seq)"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            cur.execute(f"SHOW COLUMNS FROM `{table}` LIKE 'seq'")
            if cur.fetchone() is None:
                cur.execute(
                    f"ALTER TABLE `{table}` ADD COLUMN seq BIGINT NULL, "
                    "ADD UNIQUE KEY master_id_seq (master_id, seq)"
                )
        conn.commit()


_UTC: Final = "SET time_zone = '+00:00'"


def _utc(when: Any) -> str | None:
    if not isinstance(when, int | float):
        return None
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S")
