"""The Salt harness itself: Salt talks to Salt, and each generation's bytes are as WIRE.md says.

These tests involve no saltbus code. They prove that the Salt venvs, ``salt_side_peer.py`` and
``salt_peer_client`` work, so an interop failure elsewhere points at saltbus, and they pin the
framing facts saltbus must match ("Salt generations differ in framing" in WIRE.md).
"""

from __future__ import annotations

import hashlib
import re
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.interop.salt_peer_client import (
    salt_fire,
    salt_info,
    salt_listener,
    salt_publisher,
)

TAG_PREFIX = "saltbus/harness/"
EXPECTED_VERSION = {"3006": "3006.30", "3007": "3007.8", "3008": "3008.5"}
# 3008 stamps in UTC with an offset; older generations use a naive utcnow().isoformat().
STAMP = {
    "3006": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$"),
    "3007": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$"),
    "3008": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$"),
}
# Which generations put a 4-byte big-endian length before each msgpack frame.
PREFIXED_PUB = {"3006": True, "3007": False, "3008": False}
PREFIXED_PULL = {"3006": True, "3007": False, "3008": True}
# Socket modes (pub, pull) as created by Salt.
MASTER_MODES = {"3006": (0o600, 0o600), "3007": (0o660, 0o600), "3008": (0o660, 0o600)}
READ_TIMEOUT = 5.0


def minion_stem(minion_id: str) -> str:
    return f"minion_event_{hashlib.sha256(minion_id.encode()).hexdigest()[:10]}"


def assert_salt_to_salt(version: str, sock_dir: Path, node: str, minion_id: str | None) -> None:
    """Salt's listener, filtering on a tag prefix, gets exactly what Salt's client fired."""
    with salt_listener(
        version, sock_dir, node=node, id=minion_id, tag=TAG_PREFIX, count=3, wait=15
    ) as listener:
        # Fired first, not matching the filter: Salt must skip it, not deliver it.
        other = salt_fire(version, sock_dir, "other/tag", {"skip": True}, node=node, id=minion_id)
        results = salt_fire(
            version, sock_dir, TAG_PREFIX + "evt", {"x": "y"}, node=node, id=minion_id, count=3
        )
        events = listener.events(timeout=30)

    assert other == [{"result": True}]
    assert results == [{"result": True}] * 3
    assert [e["tag"] for e in events] == [TAG_PREFIX + "evt"] * 3
    for i, event in enumerate(events):
        data = dict(event["data"])
        stamp = data.pop("_stamp")
        assert STAMP[version].match(stamp), stamp
        assert data == {"x": "y", "n": i}


def test_salt_venv_versions(salt_version: str) -> None:
    assert salt_info(salt_version) == {"salt_version": EXPECTED_VERSION[salt_version]}


def test_master_salt_to_salt(salt_version: str, sock_dir: Path) -> None:
    with salt_publisher(salt_version, sock_dir, node="master") as publisher:
        modes = tuple(
            stat.S_IMODE((sock_dir / f"master_event_{kind}.ipc").stat().st_mode)
            for kind in ("pub", "pull")
        )
        assert modes == MASTER_MODES[salt_version]
        assert_salt_to_salt(salt_version, sock_dir, "master", None)
    assert publisher.returncode == 0, "Salt's publisher did not exit cleanly on SIGTERM"


def test_minion_salt_to_salt(salt_version: str, sock_dir: Path) -> None:
    minion_id = "harness-minion-1"
    with salt_publisher(salt_version, sock_dir, node="minion", id=minion_id) as publisher:
        stem = minion_stem(minion_id)
        for kind in ("pub", "pull"):
            path = sock_dir / f"{stem}_{kind}.ipc"
            assert stat.S_ISSOCK(path.stat().st_mode), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert_salt_to_salt(salt_version, sock_dir, "minion", minion_id)
    assert publisher.returncode == 0, "Salt's publisher did not exit cleanly on SIGTERM"


def split_frame(version: str, raw: bytes, prefixed: bool) -> bytes | None:
    """The msgpack frame in ``raw``, or None while it is incomplete."""
    if prefixed:
        if len(raw) < 4:
            return None
        (length,) = struct.unpack(">I", raw[:4])
        return raw[4 : 4 + length] if len(raw) >= 4 + length else None
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return None
    return raw[: unpacker.tell()]


def check_frame(version: str, raw: bytes, prefixed: bool, tag: str, fields: dict[str, Any]) -> None:
    """``raw`` is exactly one event frame of this generation, byte for byte."""
    frame = split_frame(version, raw, prefixed)
    assert frame is not None, raw.hex()
    if prefixed:
        assert raw[0] == 0x00, raw.hex()
        assert raw == struct.pack(">I", len(frame)) + frame, raw.hex()
    else:
        assert raw[0] == 0x82, raw.hex()
        assert raw == frame, raw.hex()
    # raw=False decodes msgpack str as str and bin as bytes, so these types are wire types.
    outer = msgpack.unpackb(frame, raw=False)
    assert outer == {"head": {}, "body": outer["body"]}
    assert isinstance(outer["body"], bytes)
    assert list(outer) == ["head", "body"]
    tag_bytes, sep, packed = outer["body"].partition(b"\n\n")
    assert (tag_bytes, sep) == (tag.encode(), b"\n\n")
    data = msgpack.unpackb(packed, raw=False)
    assert STAMP[version].match(data["_stamp"]), data
    assert {k: v for k, v in data.items() if k != "_stamp"} == fields
    # Re-encoding reproduces Salt's bytes exactly: map order head/body, DATA with
    # use_bin_type, _stamp last, no padding of the tag.
    assert list(data)[-1] == "_stamp"
    body = tag.encode() + b"\n\n" + msgpack.packb(data, use_bin_type=True)
    assert frame == msgpack.packb({"head": {}, "body": body}, use_bin_type=True)


def read_frame(sock: socket.socket, version: str, prefixed: bool, deadline: float) -> bytes:
    raw = b""
    while split_frame(version, raw, prefixed) is None:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        raw += chunk
    return raw


def test_publish_socket_bytes(salt_version: str, sock_dir: Path) -> None:
    tag = TAG_PREFIX + "raw"
    prefixed = PREFIXED_PUB[salt_version]
    with salt_publisher(salt_version, sock_dir, node="master"):
        sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sub.connect(str(sock_dir / "master_event_pub.ipc"))
            # connect() returns once the kernel queued us, possibly before Salt's loop
            # accepted and registered the subscriber; an event fired in that gap is not
            # ours to see, so fire again (bounded) until one arrives.
            raw = b""
            for attempt in range(5):
                [result] = salt_fire(salt_version, sock_dir, tag, {"attempt": attempt})
                assert result == {"result": True}
                raw = read_frame(sub, salt_version, prefixed, time.monotonic() + READ_TIMEOUT)
                if raw:
                    break
            # Later events may follow; keep only the first frame for the byte check.
            frame = split_frame(salt_version, raw, prefixed)
            assert frame is not None, f"no complete frame from Salt {salt_version}: {raw.hex()}"
            first = (struct.pack(">I", len(frame)) if prefixed else b"") + frame
            fields = msgpack.unpackb(
                msgpack.unpackb(frame, raw=False)["body"].partition(b"\n\n")[2], raw=False
            )
            fields.pop("_stamp")
            check_frame(salt_version, first, prefixed, tag, fields)
        finally:
            sub.close()


def test_pull_socket_bytes(salt_version: str, sock_dir: Path) -> None:
    """What Salt's firing client writes: we stand in for the publisher on the pull socket."""
    tag = TAG_PREFIX + "pull"
    prefixed = PREFIXED_PULL[salt_version]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_dir / "master_event_pull.ipc"))
    server.listen(1)
    server.settimeout(30)
    received: list[bytes] = []

    def accept_and_read() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            while chunk := conn.recv(65536):  # the client closes after fire_event
                received.append(chunk)

    reader = threading.Thread(target=accept_and_read, daemon=True)
    reader.start()
    try:
        assert salt_fire(salt_version, sock_dir, tag, {"k": [1, "two"]}) == [{"result": True}]
        reader.join(timeout=30)
        assert not reader.is_alive(), "Salt's client did not close its pull connection"
    finally:
        server.close()
    check_frame(salt_version, b"".join(received), prefixed, tag, {"k": [1, "two"]})


@pytest.mark.parametrize("node", ["master", "minion"])
def test_publisher_needs_no_subscriber(salt_version: str, sock_dir: Path, node: str) -> None:
    """Firing with nobody listening succeeds, and a listener then times out cleanly."""
    minion_id = None if node == "master" else "harness-minion-2"
    with salt_publisher(salt_version, sock_dir, node=node, id=minion_id):
        assert salt_fire(salt_version, sock_dir, "t/none", {}, node=node, id=minion_id) == [
            {"result": True}
        ]
        with salt_listener(
            salt_version, sock_dir, node=node, id=minion_id, count=1, wait=1
        ) as listener:
            assert listener.events(timeout=30, allow_timeout=True) == []
