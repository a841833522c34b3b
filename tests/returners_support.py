"""Helpers for the returner tests: journal events, a returner plugin installed
through a real dist-info directory, and a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from saltbus.journal import Journal, JournalRecord
from saltbus.wire import pack_body

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "sb-test-pw"
WAIT = 30.0


def append(path: Path, events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Journal ``events`` after the journal's last seq; their seqs."""
    with Journal.open(path) as journal:
        first = journal.last_seq() + 1
        records = [
            JournalRecord(first + i, time.time(), tag, pack_body(tag, data))
            for i, (tag, data) in enumerate(events)
        ]
        journal.append(records)
    return [r.seq for r in records]


class Recorder:
    """A returner that keeps what it got; fails while ``failures`` > 0."""

    def __init__(self, options: Any = None, failures: int = 0) -> None:
        self.options = options
        self.failures = failures
        self.batches: list[list[dict[str, Any]]] = []
        self.attempts: list[float] = []
        self.closed = False
        self.lock = threading.Lock()

    def event_return(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.attempts.append(time.monotonic())
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("database unavailable")
            self.batches.append(events)

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for batch in self.batches for e in batch]

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]


# -- a plugin registered through an entry point -----------------------------

_PLUGIN = '''
import json, os

class FileReturner:
    """Appends each event as a JSON line; fails while the fail_while file exists."""

    def __init__(self, options):
        self.path = options["path"]
        self.fail_while = options.get("fail_while")
        self.master_id = options.get("master_id")

    def event_return(self, events):
        if self.fail_while and os.path.exists(self.fail_while):
            raise RuntimeError("fail_while file exists")
        with open(self.path, "a") as f:
            for e in events:
                f.write(json.dumps({"tag": e["tag"], "seq": e["seq"], "data": e["data"],
                                    "batch": len(events), "master_id": self.master_id}) + "\\n")

    def close(self):
        open(self.path + ".closed", "w").close()
'''

_MODULE_RETURNER = """
RECEIVED = []

def event_return(events):
    RECEIVED.extend(events)
"""


def install_plugin(where: Path) -> Path:
    """Write the test returners and a dist-info declaring them under group
    saltbus.returners into ``where``; put it on sys.path (or PYTHONPATH)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sbtest_returner.py").write_text(_PLUGIN)
    (where / "sbtest_modret.py").write_text(_MODULE_RETURNER)
    info = where / "sbtest_returners-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbtest-returners\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
            [saltbus.returners]
            jsonfile = sbtest_returner:FileReturner
            modret = sbtest_modret
            broken = sbtest_missing_module:Nothing
            """)
    )
    return where


# -- PostgreSQL -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Postgres:
    """A PostgreSQL server of our own, in a fresh directory, on an ephemeral port."""

    root: Path
    port: int
    user: str = "postgres"
    password: str = PG_PASSWORD
    dbname: str = "postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def options(self, **extra: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
            "connect_timeout": 2,
            **extra,
        }

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c max_connections=20 -c shared_buffers=32MB"
        )
        _pg_ctl(self, "start", "-o", options, "-l", str(self.root / "log"))

    def stop(self) -> None:
        _pg_ctl(self, "stop", "-m", "fast")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: CI runs the tests as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _pg_ctl(pg: Postgres, action: str, *args: str) -> None:
    command = [str(PG_BIN / "pg_ctl"), action, "-D", str(pg.data), "-w", "-t", "30", *args]
    result = subprocess.run(
        _as_postgres(command), capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        log = pg.root / "log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise AssertionError(f"pg_ctl {action} failed: {result.stderr}\n{tail}")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="sbpg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
        root.chmod(0o700)
        pwfile = root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        user_name = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(root / "data"),
                    "-U",
                    user_name,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            check=True,
            timeout=120,
        )
        pg = Postgres(root, free_port(), user=user_name)
        pg.start()
        try:
            yield pg
        finally:
            if pg.running():
                pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- a settings file for `saltbus serve --config` --------------------------


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path
