"""Fixtures shared by every test module.

Unix socket paths are limited to 107 bytes, and pytest's ``tmp_path`` can be
long, so socket directories come from a short, fresh directory under the
system temporary directory instead, removed after the test.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.server import EmbeddedPublisher
from tests.cluster_support import NatsServer, nats_servers, short_dir
from tests.serve_support import ServeProcess
from tests.server_support import serve_bus


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep every journal a test (or a process it starts) writes out of the real
    data directory: a publisher started without --data-dir inherits this."""
    monkeypatch.setenv("SALTBUS_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A fresh, short, empty directory for a bus's sockets (not created 0700 on purpose:
    the publisher is expected to fix the mode of a directory it creates, not of this one)."""
    path = Path(tempfile.mkdtemp(prefix="sb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def new_sock_dir(sock_dir: Path) -> Path:
    """A path under a short directory that does not exist yet: the publisher creates it."""
    return sock_dir / "bus"


@pytest.fixture
def bus_config(sock_dir: Path) -> Config:
    """A master bus's settings, in a fresh directory, untouched by the environment,
    with its journal (the default, batch durability) in that directory too."""
    return Config.load(
        env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": sock_dir / "data"}
    )


@pytest.fixture
def publisher(bus_config: Config) -> Iterator[EmbeddedPublisher]:
    """A publisher serving ``bus_config`` in this process for the test."""
    with EmbeddedPublisher(bus_config) as running:
        yield running


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``saltbus serve`` processes for the test: ``serves(config, *args, env=...)``
    is a ready :class:`ServeProcess` with its log in ``tmp_path``. Whatever still
    runs when the test ends is killed."""
    started: list[ServeProcess] = []

    def start(config: Config, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(config, *args, log=tmp_path / f"serve-{len(started)}.log", env=env)
        started.append(proc)
        return proc.wait_ready()

    try:
        yield start
    finally:
        errors = []
        for proc in started:  # every one, even when killing another failed
            try:
                proc.close()
            except Exception as exc:  # pragma: no cover - reported after the others
                errors.append(exc)
        assert not errors, errors


@pytest.fixture
def serve(serves: Callable[..., ServeProcess]) -> Callable[..., ServeProcess]:
    """``serve(root, *args, env=...)``: a ready ``saltbus serve`` for the bus of
    ``make_config(root)``, killed when the test ends."""
    return functools.partial(serve_bus, serves)


@pytest.fixture
def root() -> Iterator[Path]:
    """A short, fresh directory (unix socket paths stay under 107 bytes) for
    the cluster tests' nodes and NATS servers."""
    with short_dir() as path:
        yield path


@pytest.fixture
def nats_server(root: Path) -> Iterator[NatsServer]:
    """One real nats-server with JetStream, in ``root``, stopped after the test."""
    with nats_servers(root, 1) as (server,):
        yield server


@pytest.fixture
def nats_cluster(root: Path) -> Iterator[list[NatsServer]]:
    """Three real nats-servers forming one JetStream cluster, in ``root``."""
    with nats_servers(root, 3) as servers:
        yield servers
