"""Binding the bus's sockets (saltbus.server.sockets), through the daemon:
sock_dir and socket modes, a second or foreign publisher refused, stale
sockets replaced, something else at a socket's path left alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.errors import ConfigError, PublisherRunningError
from saltbus.server import EmbeddedPublisher, Server
from saltbus.wire import encode_frame
from tests.serve_support import ServeProcess
from tests.server_support import (
    RawSubscriber,
    body,
    make_config,
    send,
    sync_subscribers,
)
from tests.waiting import wait_until


def test_sock_dir_created_0700_and_sockets_0600(new_sock_dir: Path) -> None:
    assert not new_sock_dir.exists()
    config = make_config(new_sock_dir.parent)
    assert config.sock_dir == new_sock_dir
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        with EmbeddedPublisher(config) as bus:
            assert stat.S_IMODE(new_sock_dir.stat().st_mode) == 0o700
            for address in (bus.pub_address, bus.pull_address):
                assert isinstance(address, Path)
                mode = address.stat().st_mode
                assert stat.S_ISSOCK(mode)
                assert stat.S_IMODE(mode) == 0o600, oct(mode)
    finally:
        os.umask(old_umask)
    assert not Path(config.pub_address).exists()  # type: ignore[arg-type]
    assert not Path(config.pull_address).exists()  # type: ignore[arg-type]


def test_existing_sock_dir_keeps_its_mode(sock_dir: Path) -> None:
    """An existing sock_dir may be Salt's own, shared on purpose: left as it is."""
    config = make_config(sock_dir)
    config.sock_dir.mkdir()
    config.sock_dir.chmod(0o750)
    with EmbeddedPublisher(config):
        assert stat.S_IMODE(config.sock_dir.stat().st_mode) == 0o750


def test_second_server_on_same_sock_dir_is_refused(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config) as first:
        with pytest.raises(PublisherRunningError) as info:
            EmbeddedPublisher(bus_config).start()
        assert os.fspath(bus_config.sock_dir) in str(info.value)

        async def second() -> None:
            async with Server(bus_config):
                pass  # pragma: no cover - must not start

        with pytest.raises(PublisherRunningError, match=str(bus_config.sock_dir)):
            asyncio.run(second())
        # The refused servers left the first one's sockets alone.
        sub = RawSubscriber(first.pub_address)
        wait_until(lambda: len(first.subscriber_stats()) == 1, "subscriber")
        send(first.pull_address, encode_frame(body("still/here", 1)))
        assert sub.read(1)[0].tag == "still/here"
        sub.close()


def test_live_foreign_publisher_is_refused_naming_the_path(bus_config: Config) -> None:
    """A live socket that is not a saltbus daemon's (Salt's, say) is never taken over."""
    bus_config.sock_dir.mkdir()
    pub = Path(bus_config.pub_address)  # type: ignore[arg-type]
    pull = Path(bus_config.pull_address)  # type: ignore[arg-type]
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    foreign.bind(os.fspath(pub))
    foreign.listen()
    try:
        with pytest.raises(PublisherRunningError, match=str(pub)):
            EmbeddedPublisher(bus_config).start()
        assert stat.S_ISSOCK(pub.stat().st_mode)  # not removed
        assert not pull.exists()  # what it had bound itself was cleaned up
    finally:
        foreign.close()
    # Once the foreign publisher is gone, its stale socket is no obstacle.
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, encode_frame(body("after/foreign", 1)))
        assert sub.read(1)[0].tag == "after/foreign"
        sub.close()


@pytest.mark.parametrize("which", ["pub", "pull"])
@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_non_socket_at_socket_path_is_refused(bus_config: Config, which: str, kind: str) -> None:
    bus_config.sock_dir.mkdir()
    target = Path(bus_config.pub_address if which == "pub" else bus_config.pull_address)  # type: ignore[arg-type]
    other = Path(bus_config.pull_address if which == "pub" else bus_config.pub_address)  # type: ignore[arg-type]
    precious = bus_config.sock_dir / "precious.txt"
    precious.write_text("keep me")
    if kind == "file":
        target.write_text("keep me")
    elif kind == "symlink":
        target.symlink_to(precious)
    else:
        target.mkdir()
    with pytest.raises(ConfigError, match=str(target)):
        EmbeddedPublisher(bus_config).start()
    assert target.exists() or target.is_symlink()
    assert precious.read_text() == "keep me"
    if kind == "file":
        assert target.read_text() == "keep me"
    assert not other.exists()
    # The lock was released: with the obstacle gone, the bus starts.
    if kind == "directory":
        target.rmdir()
    else:
        target.unlink()
    with EmbeddedPublisher(bus_config):
        assert stat.S_ISSOCK(target.stat().st_mode)


def test_stale_sockets_of_a_killed_serve_are_replaced(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    first = serve(sock_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.pub.exists() and first.pull.exists()  # left behind by kill -9
    with pytest.raises(ConnectionRefusedError):
        socket.socket(socket.AF_UNIX).connect(os.fspath(first.pub))
    second = serve(sock_dir)
    assert second.alive()
    sub = RawSubscriber(second.pub)
    sync_subscribers(second.pull, [sub])
    send(second.pull, encode_frame(body("after/kill", 1)))
    assert sub.read(1)[0].tag == "after/kill"
    assert "Traceback" not in second.log
    sub.close()


def test_stale_sockets_are_replaced_in_process(bus_config: Config) -> None:
    bus_config.sock_dir.mkdir()
    for address in (bus_config.pub_address, bus_config.pull_address):
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(os.fspath(address))  # type: ignore[arg-type]
        dead.close()  # the file stays; nobody listens
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, encode_frame(body("fresh", 1)))
        assert sub.read(1)[0].tag == "fresh"
        sub.close()
