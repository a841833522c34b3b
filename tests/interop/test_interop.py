"""Salt's own clients of every generation through ``saltbus serve`` (issues 2 and 9).

Salt 3006, 3007 and 3008 fire and listen through a ``saltbus serve --salt-version X``
daemon, on a master and on a minion bus; clients of all three generations fire into one
daemon; and a Salt listener decodes what saltbus publishes exactly as what Salt's own
publisher publishes for the same bytes fired.

The daemons (one per generation and node) and the Salt client processes (one per
generation, see ``salt_side_driver.py``) are shared by the whole module; each test uses its
own tags, so what one test fires is filtered out by the others' listeners.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from saltbus import Listener, Sender
from saltbus.wire import FrameDecoder, Framing
from tests.interop.buses import (
    NODES,
    DaemonPool,
    module_dir,
    strip_stamp,
)
from tests.interop.salt_driver_client import DriverPool
from tests.interop.salt_peer_client import SALT_VERSIONS, salt_publisher
from tests.serve_support import ServeProcess

# Which generations' listeners read each daemon framing (WIRE.md): a daemon set to 3006
# publishes length-prefixed frames, one set to 3007 or 3008 bare frames.
LISTENERS_FOR_DAEMON = {"3006": ("3006",), "3007": ("3007", "3008"), "3008": ("3007", "3008")}
# A Salt generation's firing client writes this framing on the pull socket.
PULL_FRAMING = {
    "3006": Framing.LENGTH_PREFIXED,
    "3007": Framing.BARE,
    "3008": Framing.LENGTH_PREFIXED,
}
WAIT = 10.0


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    yield from module_dir()


@pytest.fixture(scope="module")
def daemons(root: Path) -> Iterator[DaemonPool]:
    pool = DaemonPool(root)
    try:
        yield pool
    finally:
        problems = pool.close()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def drivers(daemons: DaemonPool) -> Iterator[DriverPool]:
    # Depends on ``daemons`` so that Salt's clients close before the daemons stop.
    pool = DriverPool()
    try:
        yield pool
    finally:
        pool.close()


def rich_data(n: int) -> dict[str, Any]:
    """Event data with the value types Salt's events carry."""
    return {
        "n": n,
        "text": "héllo wörld ✓",
        "raw": b"\x00\xff bin",
        "neg": -(2**40),
        "big": 2**63,
        "pi": 3.25,
        "flags": [True, False, None],
        "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
    }


# -- 1. Salt's clients through saltbus serve ---------------------------------------


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_salt_fires_salt_listens_through_saltbus(
    version: str, node: str, daemons: DaemonPool, drivers: DriverPool
) -> None:
    daemon = daemons.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/salt2salt/{version}/{node}"
    listener = salt.listener(daemon.sock_dir, node, sync_tag=f"{prefix}/sync")
    firer = salt.open(daemon.sock_dir, node, listen=False)
    try:
        # Not under the filter: get_event must skip it rather than return it.
        events = [("it/elsewhere", {"skip": True})]
        events += [(f"{prefix}/evt", rich_data(n)) for n in range(3)]
        assert salt.fire(firer, events) == [True] * 4
        got, timed_out = salt.get(listener, 3, tag=f"{prefix}/evt", wait=WAIT)
        assert not timed_out
        assert [e["tag"] for e in got] == [f"{prefix}/evt"] * 3
        assert [strip_stamp(version, e["data"]) for e in got] == [rich_data(n) for n in range(3)]

        # full=False: get_event returns the data dict alone.
        assert salt.fire(firer, [(f"{prefix}/plain", {"k": "v"})]) == [True]
        [data], _ = salt.get(listener, tag=f"{prefix}/plain", wait=WAIT, full=False)
        assert strip_stamp(version, data) == {"k": "v"}

        # Salt's other match types, each skipping the event fired just before.
        filtered = [
            (f"{prefix}/glob/abc", {}),
            (f"{prefix}/glob/xyz", {"i": 1}),
            (f"{prefix}/re/7", {}),
            (f"{prefix}/re/42", {"i": 2}),
            (f"{prefix}/end/a.first", {}),
            (f"{prefix}/end/b.last", {"i": 3}),
        ]
        assert salt.fire(firer, filtered) == [True] * 6
        matched = [
            salt.get(listener, tag=tag, match_type=match_type, wait=WAIT)[0]
            for tag, match_type in (
                (f"{prefix}/glob/x*", "fnmatch"),
                (rf"{prefix}/re/\d\d$", "regex"),
                (".last", "endswith"),
            )
        ]
        assert [(e["tag"], e["data"]["i"]) for [e] in matched] == [
            (f"{prefix}/glob/xyz", 1),
            (f"{prefix}/re/42", 2),
            (f"{prefix}/end/b.last", 3),
        ]

        # Nothing more under the prefix: get_event returns None once wait passes.
        started = time.monotonic()
        assert salt.get(listener, tag=f"{prefix}/evt", wait=0.5) == ([], True)
        assert time.monotonic() - started < 5
    finally:
        salt.close_event(listener)
        salt.close_event(firer)


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_salt_fires_saltbus_listener_receives(
    version: str, node: str, daemons: DaemonPool, drivers: DriverPool
) -> None:
    daemon = daemons.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/salt2sb/{version}/{node}"
    firer = salt.open(daemon.sock_dir, node, listen=False)
    try:
        # A saltbus listener on a saltbus daemon is subscribed once connect() returns.
        with Listener(daemon.config, tag=f"{prefix}/") as listener:
            events: list[tuple[str, dict[str, Any]]] = [("it/elsewhere", {})]
            events += [(f"{prefix}/e", rich_data(n)) for n in range(3)]
            assert salt.fire(firer, events) == [True] * 4
            got = [listener.receive(WAIT) for _ in range(3)]
        assert all(e is not None for e in got), got
        assert [e.tag for e in got if e] == [f"{prefix}/e"] * 3
        assert [strip_stamp(version, dict(e.data)) for e in got if e] == [
            rich_data(n) for n in range(3)
        ]
        seqs = [e.seq for e in got if e and e.seq is not None]
        assert len(seqs) == 3 and seqs == sorted(seqs), got  # numbered by saltbus
    finally:
        salt.close_event(firer)


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_saltbus_fires_salt_listener_receives(
    version: str, node: str, daemons: DaemonPool, drivers: DriverPool
) -> None:
    """saltbus's Sender, set to generation X, is read by Salt X's listener, stamp included."""
    daemon = daemons.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/sb2salt/{version}/{node}"
    listener = salt.listener(daemon.sock_dir, node, sync_tag=f"{prefix}/sync")
    try:
        with Sender(daemon.config) as sender:
            sender.fire(f"{prefix}/e", rich_data(0))
            acked = sender.fire(f"{prefix}/e", rich_data(1), ack=True, timeout=5)
        assert isinstance(acked.seq, int)
        got, timed_out = salt.get(listener, 2, tag=f"{prefix}/e", wait=WAIT)
        assert not timed_out
        # The _stamp saltbus adds has the format of the configured generation.
        assert [strip_stamp(version, e["data"]) for e in got] == [rich_data(0), rich_data(1)]
    finally:
        salt.close_event(listener)


# -- 4. firing clients of every generation into one daemon ---------------------------


@pytest.mark.parametrize("daemon_version", SALT_VERSIONS)
def test_mixed_generations_into_one_daemon(
    daemon_version: str, daemons: DaemonPool, drivers: DriverPool
) -> None:
    """The pull socket takes both framings at once; each listener generation that reads
    the daemon's publish framing gets every event, per-client order kept."""
    daemon = daemons.get(daemon_version, "master")
    prefix = f"it/mixed/{daemon_version}"
    listeners = {
        v: drivers.get(v).listener(daemon.sock_dir, sync_tag=f"{prefix}/sync/{v}")
        for v in LISTENERS_FOR_DAEMON[daemon_version]
    }
    firers = {v: drivers.get(v).open(daemon.sock_dir, listen=False) for v in SALT_VERSIONS}
    try:
        with Listener(daemon.config, tag=f"{prefix}/from/") as sb_listener:
            # Interleave the generations: each client keeps its pull connection open.
            for n in range(3):
                for v in SALT_VERSIONS:
                    fired = drivers.get(v).fire(firers[v], [(f"{prefix}/from/{v}", {"n": n})])
                    assert fired == [True]
            sb_got = [sb_listener.receive(WAIT) for _ in range(9)]
        expected = {(f"{prefix}/from/{v}", n) for v in SALT_VERSIONS for n in range(3)}

        assert all(e is not None for e in sb_got), sb_got
        assert {(e.tag, e.data["n"]) for e in sb_got if e} == expected
        for lv, name in listeners.items():
            got, timed_out = drivers.get(lv).get(name, 9, tag=f"{prefix}/from/", wait=WAIT)
            assert not timed_out, f"Salt {lv} listener got only {got}"
            assert {(e["tag"], e["data"]["n"]) for e in got} == expected
            for v in SALT_VERSIONS:
                from_v = [e["data"] for e in got if e["tag"] == f"{prefix}/from/{v}"]
                # Events of one client arrive in order, each with its own generation's stamp.
                assert [strip_stamp(v, d) for d in from_v] == [{"n": n} for n in range(3)]
    finally:
        for lv, name in listeners.items():
            drivers.get(lv).close_event(name)
        for v, name in firers.items():
            drivers.get(v).close_event(name)


# -- 6. the same bytes, through Salt's publisher and through saltbus's -----------------


def capture_salt_fire(
    version: str, sock_dir: Path, drivers: DriverPool, tag: str, data: dict[str, Any]
) -> bytes:
    """The bytes Salt's client writes to the pull socket for one fire_event."""
    path = sock_dir / "master_event_pull.ipc"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(WAIT)
    received: list[bytes] = []

    def read_all() -> None:
        with suppress(TimeoutError):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(WAIT)
                while chunk := conn.recv(65536):  # until the client closes
                    received.append(chunk)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    salt = drivers.get(version)
    firer = salt.open(sock_dir, listen=False)
    try:
        assert salt.fire(firer, [(tag, data)]) == [True]
    finally:
        salt.close_event(firer)  # closes its pull connection: the reader sees EOF
        reader.join(timeout=WAIT)
        server.close()
    assert not reader.is_alive(), "Salt's client did not close its pull connection"
    return b"".join(received)


def publish_bodies(
    sock_dir: Path, pull_bytes: bytes, count: int
) -> tuple[Framing | None, list[tuple[Any, bytes]]]:
    """Write ``pull_bytes`` to the bus's pull socket; return the framing and the (head,
    body) of the first ``count`` frames a raw subscriber of its publish socket reads."""
    sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sub.connect(str(sock_dir / "master_event_pub.ipc"))
    time.sleep(0.2)  # let the publisher accept the subscriber before the event comes
    decoder = FrameDecoder()
    frames: list[tuple[Any, bytes]] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pull:
            pull.connect(str(sock_dir / "master_event_pull.ipc"))
            pull.sendall(pull_bytes)
        deadline = time.monotonic() + WAIT
        while len(frames) < count and time.monotonic() < deadline:
            sub.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sub.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            decoder.receive_data(chunk)
            frames += [(dict(f.head), f.body) for f in decoder]
    finally:
        sub.close()
    return decoder.framing, frames


@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_same_bytes_decode_the_same_as_from_salts_publisher(
    version: str, daemons: DaemonPool, drivers: DriverPool, sock_dir: Path
) -> None:
    """One fire's bytes, captured from Salt's client, go into Salt X's publisher and into
    ``saltbus serve --salt-version X``: the bodies published are byte for byte the same,
    in the same framing, and Salt X's listener decodes the same (tag, data) from both."""
    tag = f"it/bytes/{version}/ü n/évt"
    data = rich_data(7)
    capture_dir, salt_dir = sock_dir / "capture", sock_dir / "salt"
    capture_dir.mkdir()
    salt_dir.mkdir()
    fired = capture_salt_fire(version, capture_dir, drivers, tag, data)
    daemon: ServeProcess = daemons.get(version, "master")
    salt = drivers.get(version)

    seen: dict[str, tuple[Framing | None, Any, Any]] = {}
    with salt_publisher(version, salt_dir, node="master"):
        for label, bus in (("salt", salt_dir), ("saltbus", daemon.sock_dir)):
            listener = salt.listener(bus, sync_tag=f"it/bytes/{version}/sync/{label}")
            try:
                framing, frames = publish_bodies(bus, fired, 1)
                got, timed_out = salt.get(listener, tag=tag, wait=WAIT)
            finally:
                salt.close_event(listener)
            assert not timed_out and len(frames) == 1, (label, frames, got)
            seen[label] = (framing, frames[0], got[0])

    salt_framing, (salt_head, salt_body), salt_event = seen["salt"]
    sb_framing, (sb_head, sb_body), sb_event = seen["saltbus"]
    assert sb_framing is salt_framing is not None
    assert salt_head == {}
    assert set(sb_head) <= {"seq", "time"}  # saltbus's numbering; Salt reads only body
    assert sb_body == salt_body
    assert sb_event == salt_event
    assert sb_event["tag"] == tag
    assert strip_stamp(version, sb_event["data"]) == data
    # And the body is the one Salt's client fired.
    frame = FrameDecoder(PULL_FRAMING[version])
    frame.receive_data(fired)
    assert [f.body for f in frame] == [salt_body]
