"""Helpers for the tests of the publisher daemon over real sockets
(test_server, test_connections, test_sockets): raw-socket clients that see
the bytes, a bus's settings in a test's directory, events to fire."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from saltbus.config import Address, Config
from saltbus.wire import Frame, FrameDecoder, Framing, encode_frame, pack_body
from tests.serve_support import ServeProcess, bus_flags

WAIT = 10.0  # the bound of every wait in the daemon's tests


def connect(address: Address, timeout: float = WAIT) -> socket.socket:
    """A connected blocking socket, retrying while the publisher is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address if isinstance(address, tuple) else os.fspath(address))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        return sock


def make_config(root: Path, **overrides: Any) -> Config:
    """A bus in ``root/bus`` with its journal in ``root/data``, whatever the environment
    (the default data_dir as root is /var/lib/saltbus: tests must not write there)."""
    values: dict[str, Any] = {"sock_dir": root / "bus", "data_dir": root / "data"}
    values.update(overrides)
    return Config.load(env={}, overrides=values)


def body(tag: str, n: int, pad: int = 0, **extra: Any) -> bytes:
    data: dict[str, Any] = {"n": n, **extra}
    if pad:
        data["pad"] = "x" * pad
    return pack_body(tag, data)


def data_of(frame: Frame) -> dict[str, Any]:
    value = msgpack.unpackb(frame.body.split(b"\n\n", 1)[1], raw=False)
    assert isinstance(value, dict)
    return value


class RawSubscriber:
    """A listener on the publish socket that keeps every byte it reads."""

    def __init__(
        self, address: Address, framing: Framing | None = None, *, keep_raw: bool = False
    ) -> None:
        self.sock = connect(address)
        self.decoder = FrameDecoder(framing, max_frame_size=64 << 20)
        self.keep_raw = keep_raw
        self.raw = bytearray()  # every byte read, with keep_raw
        self.frames: list[Frame] = []
        self.counts: dict[str, int] = {}  # frames received, by tag
        self.eof = False

    def _read(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        if self.keep_raw:
            self.raw += data
        self.decoder.receive_data(data)
        for frame in self.decoder:
            self.frames.append(frame)
            tag = frame.tag if frame.body else ""
            self.counts[tag] = self.counts.get(tag, 0) + 1

    def read(self, count: int, timeout: float = WAIT) -> list[Frame]:
        """Until ``count`` frames in all have arrived (fails on timeout or EOF)."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            assert not self.eof, f"EOF after {len(self.frames)} of {count} frames"
            assert time.monotonic() < deadline, f"{len(self.frames)} of {count} frames"
            self._read(deadline)
        return self.frames

    def read_tag(self, tag: str, count: int, timeout: float = WAIT) -> list[Frame]:
        """Until ``count`` frames tagged ``tag`` have arrived; returns those."""
        deadline = time.monotonic() + timeout
        while (got := self.counts.get(tag, 0)) < count:
            assert not self.eof, f"EOF after {got} of {count} {tag!r} frames"
            assert time.monotonic() < deadline, f"{got} of {count} {tag!r} frames"
            self._read(deadline)
        return [f for f in self.frames if f.tag == tag]

    def read_to_eof(self, timeout: float = WAIT) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, "no EOF from the publisher"
            self._read(deadline)
        return self.frames

    def tags(self) -> list[str]:
        return [f.tag if f.body else "" for f in self.frames]

    def close(self) -> None:
        self.sock.close()


def send(address: Address, data: bytes) -> None:
    with connect(address) as sock:
        sock.sendall(data)


def is_closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True when the publisher closed this connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def serve_bus(
    serves: Callable[..., ServeProcess], root: Path, *args: str, env: dict[str, str] | None = None
) -> ServeProcess:
    """A ready ``saltbus serve`` for the bus of ``make_config(root)``, started
    by the ``serves`` fixture (which kills it when the test ends)."""
    config = make_config(root)
    return serves(config, *bus_flags(config), *args, env=env)


def sync_subscribers(pull: Address, subs: list[RawSubscriber], framing: Framing = Framing.BARE):
    """Make sure the publisher has registered ``subs``: fire probes until each has
    seen one, then an end marker; afterwards each subscriber's ``frames`` is empty."""
    marker = f"sync/{uuid.uuid4().hex}"
    with connect(pull) as sock:
        deadline = time.monotonic() + WAIT
        while not all(marker + "/probe" in s.tags() for s in subs):
            assert time.monotonic() < deadline, "subscribers never saw a probe"
            sock.sendall(encode_frame(pack_body(marker + "/probe", {}), framing=framing))
            for s in subs:
                s._read(time.monotonic() + 0.05)
        sock.sendall(encode_frame(pack_body(marker + "/end", {}), framing=framing))
        for s in subs:
            while marker + "/end" not in s.tags():
                s.read(len(s.frames) + 1)
            s.frames.clear()
            s.counts.clear()
