"""saltbus's library and CLI against Salt's own publisher, every generation (issues 2 and 9).

Salt 3006, 3007 and 3008 each run their own master and minion event publisher
(``salt_side_peer.py publisher``); saltbus's Salt-style classes, ``Listener``/``Sender``,
``saltbus listen``, ``saltbus fire`` and ``saltbus doctor`` fire into and read from them,
and Salt's own client is on the other end. Also: the wrong ``--salt-version`` is reported,
not silent; and a saltbus listener never writes to a Salt publisher (Salt 3007 and 3008
log a traceback for anything a listener writes that is not a frame).

The publishers (one per generation and node) and the Salt client processes (one per
generation) are shared by the module; each test uses its own tags.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import saltbus
from saltbus import BusTimeoutError, Config, Event, Listener, Sender
from saltbus.control import Subscribe, encode_control
from saltbus.wire import Framing
from tests.interop.buses import (
    MINION_ID,
    NODES,
    STAMP,
    PublisherPool,
    SaltPublisher,
    module_dir,
    node_cli_args,
    run_saltbus,
    salt_publisher_with_log,
    saltbus_daemon,
    saltbus_listen,
    strip_stamp,
)
from tests.interop.salt_driver_client import DriverPool
from tests.interop.salt_peer_client import SALT_VERSIONS, salt_fire, salt_publisher

WAIT = 10.0
# Salt publishers whose pull socket drops what a saltbus set to another generation
# writes: 3006 and 3008 read a length prefix first, 3007 reads bare frames.
WRONG_PULL_FRAMING = [("3006", "3007"), ("3008", "3007"), ("3007", "3006"), ("3007", "3008")]
SALT_TRACEBACK_SIGNS = ("Exception parsing", "Traceback")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    yield from module_dir()


@pytest.fixture(scope="module")
def publishers(root: Path) -> Iterator[PublisherPool]:
    pool = PublisherPool(root)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def drivers(publishers: PublisherPool) -> Iterator[DriverPool]:
    # Depends on ``publishers`` so that Salt's clients close before the publishers stop.
    pool = DriverPool()
    try:
        yield pool
    finally:
        pool.close()


def saltstyle_event(publisher: SaltPublisher, listen: bool = True) -> saltbus.SaltEvent:
    """saltbus's MasterEvent/MinionEvent for the publisher's bus, as Salt code makes them."""
    opts: dict[str, Any] = {"sock_dir": str(publisher.sock_dir), "salt_version": publisher.version}
    if publisher.node == "master":
        return saltbus.MasterEvent(publisher.sock_dir, opts=opts, listen=listen)
    return saltbus.MinionEvent(dict(opts, id=MINION_ID), listen=listen)


def receive_under(listener: Listener, prefix: str, count: int) -> list[Event]:
    """``count`` events whose tag starts with ``prefix``, skipping others (sync events)."""
    got: list[Event] = []
    deadline = time.monotonic() + WAIT
    while len(got) < count and (remaining := deadline - time.monotonic()) > 0:
        event = listener.receive(remaining)
        if event is not None and event.tag.startswith(prefix):
            got.append(event)
    return got


def sync_listener(listener: Listener, config: Config, tag: str) -> None:
    """Fire ``tag/N`` with saltbus's Sender until ``listener`` sees one: it is subscribed."""
    with Sender(config) as sender:
        for attempt in range(10):
            sender.fire(f"{tag}/{attempt}", {})
            if receive_until(listener, f"{tag}/{attempt}", 1.0):
                return
    raise AssertionError(f"{tag}: the listener never saw its sync event")


def receive_until(listener: Listener, tag: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = listener.receive(remaining)
        if event is not None and event.tag == tag:
            return True
    return False


# -- 2. saltbus's library and CLI through Salt's publisher ---------------------------


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_saltstyle_event_fires_and_gets(
    version: str, node: str, publishers: PublisherPool, drivers: DriverPool
) -> None:
    publisher = publishers.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/saltstyle/{version}/{node}"
    listener = salt.listener(publisher.sock_dir, node, sync_tag=f"{prefix}/sync/salt")
    firer = salt.open(publisher.sock_dir, node, listen=False)
    try:
        with saltstyle_event(publisher) as event:
            for attempt in range(10):  # subscribed once its own event comes back
                assert event.fire_event({}, f"{prefix}/sync/sb/{attempt}")
                if event.get_event(wait=1, tag=f"{prefix}/sync/sb/{attempt}") is not None:
                    break
            else:
                pytest.fail("saltbus's MasterEvent never saw its own event")

            # saltbus fires: Salt's listener gets it, with this generation's _stamp.
            assert event.fire_event({"from": "saltbus", "n": [1, 2]}, f"{prefix}/sb") is True
            got, timed_out = salt.get(listener, tag=f"{prefix}/sb", wait=WAIT)
            assert not timed_out
            assert strip_stamp(version, got[0]["data"]) == {"from": "saltbus", "n": [1, 2]}

            # Salt fires: saltbus's get_event filters by tag, full or not.
            fired = [("it/elsewhere", {}), (f"{prefix}/salt/0", {"i": 0})]
            fired += [(f"{prefix}/salt/1", {"i": 1})]
            assert salt.fire(firer, fired) == [True] * 3
            full = event.get_event(wait=WAIT, tag=f"{prefix}/salt", full=True)
            assert full is not None and set(full) == {"tag", "data"}
            assert full["tag"] == f"{prefix}/salt/0"
            assert strip_stamp(version, full["data"]) == {"i": 0}
            data = event.get_event(wait=WAIT, tag=f"{prefix}/salt")
            assert data is not None and strip_stamp(version, data) == {"i": 1}

            started = time.monotonic()
            assert event.get_event(wait=0.3, tag=f"{prefix}/salt") is None
            assert time.monotonic() - started < 3
    finally:
        salt.close_event(listener)
        salt.close_event(firer)


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_listener_and_sender(
    version: str, node: str, publishers: PublisherPool, drivers: DriverPool
) -> None:
    publisher = publishers.get(version, node)
    config = Config.load(
        env={},
        overrides={
            "sock_dir": publisher.sock_dir,
            "salt_version": version,
            "node": node,
            "id": MINION_ID if node == "minion" else None,
        },
    )
    salt = drivers.get(version)
    prefix = f"it/lib/{version}/{node}"
    salt_listener = salt.listener(publisher.sock_dir, node, sync_tag=f"{prefix}/sync/salt")
    firer = salt.open(publisher.sock_dir, node, listen=False)
    try:
        with Listener(config, tag=f"{prefix}/") as listener, Sender(config) as sender:
            sync_listener(listener, config, f"{prefix}/sync/sb")
            sent = sender.fire(f"{prefix}/sb", {"k": "v"})
            assert STAMP[version].match(sent.data["_stamp"])
            got, timed_out = salt.get(salt_listener, tag=f"{prefix}/sb", wait=WAIT)
            assert not timed_out and got[0]["data"] == dict(sent.data)

            assert salt.fire(firer, [(f"{prefix}/salt", {"i": i}) for i in range(3)]) == [True] * 3
            events = receive_under(listener, f"{prefix}/salt", 3)
            assert [strip_stamp(version, dict(e.data)) for e in events] == [
                {"i": i} for i in range(3)
            ]
            # A Salt publisher numbers nothing.
            assert [e.seq for e in events] == [None] * 3
            assert listener.last_seq is None

            # Nor does it acknowledge: an acked fire says so instead of waiting for ever.
            with pytest.raises(BusTimeoutError, match="saltbus's publisher"):
                sender.fire(f"{prefix}/acked", {}, ack=True, timeout=0.5)
    finally:
        salt.close_event(salt_listener)
        salt.close_event(firer)


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_cli_listen(
    version: str, node: str, publishers: PublisherPool, drivers: DriverPool
) -> None:
    publisher = publishers.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/cli-listen/{version}/{node}"
    firer = salt.open(publisher.sock_dir, node, listen=False)
    fired: list[tuple[str, dict[str, Any]]] = [("it/elsewhere", {"skip": 1})]
    fired += [(f"{prefix}/e{n}", {"n": n, "s": "ü", "l": [None, True]}) for n in range(3)]
    args = ["--sock-dir", str(publisher.sock_dir), "--salt-version", version]
    try:
        with saltbus_listen(*args, *node_cli_args(node), "--count", "3", "--tag", prefix) as cli:
            assert salt.fire(firer, fired) == [True] * 4
            code, out, err = cli.wait()
    finally:
        salt.close_event(firer)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, out
    for n, line in enumerate(lines):
        tag, tab, text = line.partition("\t")
        assert (tag, tab) == (f"{prefix}/e{n}", "\t")
        data = json.loads(text)
        # Compact one-line JSON, keys in the order Salt packed them, as state.event prints.
        assert text == json.dumps(data, ensure_ascii=False)
        assert strip_stamp(version, data) == {"n": n, "s": "ü", "l": [None, True]}


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_cli_fire(version: str, node: str, publishers: PublisherPool, drivers: DriverPool) -> None:
    publisher = publishers.get(version, node)
    salt = drivers.get(version)
    prefix = f"it/cli-fire/{version}/{node}"
    listener = salt.listener(publisher.sock_dir, node, sync_tag=f"{prefix}/sync")
    try:
        done = run_saltbus(
            "fire",
            *("--sock-dir", str(publisher.sock_dir), "--salt-version", version),
            *node_cli_args(node),
            f"{prefix}/evt",
            '{"j": [1, 2]}',
            "k=v",
            "n=1",
            "ok=true",
        )
        # fire checks by default that its event came out of the publish socket.
        assert done.returncode == 0, done.stderr
        got, timed_out = salt.get(listener, tag=f"{prefix}/evt", wait=WAIT)
    finally:
        salt.close_event(listener)
    assert not timed_out
    assert strip_stamp(version, got[0]["data"]) == {"j": [1, 2], "k": "v", "n": 1, "ok": True}


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_cli_doctor_names_the_generation(
    version: str, node: str, publishers: PublisherPool
) -> None:
    publisher = publishers.get(version, node)
    done = run_saltbus("doctor", "--sock-dir", str(publisher.sock_dir), *node_cli_args(node))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "publisher: live (salt)" in done.stdout, done.stdout
    assert f"--salt-version {version}" in done.stdout, done.stdout
    for other in set(SALT_VERSIONS) - {version}:
        assert f"--salt-version {other}" not in done.stdout


# -- 3. the wrong generation is reported, not silent ---------------------------------


@pytest.mark.parametrize(("salt_gen", "told"), WRONG_PULL_FRAMING)
def test_fire_with_wrong_generation_fails_clearly(
    salt_gen: str, told: str, publishers: PublisherPool
) -> None:
    publisher = publishers.get(salt_gen, "master")
    started = time.monotonic()
    done = run_saltbus(
        "fire",
        *("--sock-dir", str(publisher.sock_dir), "--salt-version", told),
        f"it/wrong/{salt_gen}/{told}",
        "k=v",
        "--timeout",
        "1",
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0, f"Salt {salt_gen} dropped the event, yet fire exited 0"
    # About 1.5 s on a quiet machine; the bound leaves room for a loaded CI runner.
    assert elapsed < 10, f"fire took {elapsed:.1f} s to report it"
    assert "saltbus doctor" in done.stderr and "framing" in done.stderr, done.stderr
    assert told in done.stderr
    assert "Traceback" not in done.stderr


def test_default_setting_receives_from_a_3006_publisher(
    publishers: PublisherPool, drivers: DriverPool
) -> None:
    """3006 publishes length-prefixed frames; saltbus's listeners left at the default
    (3007, bare) tell the framing from the first byte and receive anyway."""
    publisher = publishers.get("3006", "master")
    salt = drivers.get("3006")
    prefix = "it/default-on-3006"
    config = Config.load(env={}, overrides={"sock_dir": publisher.sock_dir})
    assert config.salt_version == "3007"
    firer = salt.open(publisher.sock_dir, listen=False)
    try:
        with (
            Listener(config, tag=prefix) as listener,
            saltbus_listen(
                "--sock-dir", str(publisher.sock_dir), "--count", "2", "--tag", prefix
            ) as cli,
        ):
            assert salt.fire(firer, [(f"{prefix}/e", {"n": n}) for n in range(2)]) == [True] * 2
            events = receive_under(listener, f"{prefix}/e", 2)
            code, out, err = cli.wait()
    finally:
        salt.close_event(firer)
    assert [strip_stamp("3006", dict(e.data)) for e in events] == [{"n": 0}, {"n": 1}]
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [f"{prefix}/e"] * 2


# -- 5. a saltbus listener never writes to Salt's publisher --------------------------


@pytest.mark.parametrize("version", ["3007", "3008"])
def test_saltbus_listeners_write_nothing_to_salt(
    version: str, sock_dir: Path, drivers: DriverPool
) -> None:
    """Salt 3007/3008 parse what a listener writes and log a traceback for anything
    that is not a {"head", "body"} map; saltbus's listeners must stay silent (they
    speak saltbus's extensions only to a saltbus publisher)."""
    salt = drivers.get(version)
    prefix = f"it/silent/{version}"
    with salt_publisher_with_log(version, sock_dir, "master") as publisher:
        firer = salt.open(sock_dir, listen=False)
        try:
            with (
                Listener(publisher.config(), tag=prefix) as listener,
                # The CLI at the default setting and at the other generations'.
                saltbus_listen("--sock-dir", str(sock_dir), "--count", "2", "--tag", prefix) as a,
                saltbus_listen(
                    *("--sock-dir", str(sock_dir), "--salt-version", "3006"),
                    *("--count", "2", "--tag", prefix),
                ) as b,
                saltbus.MasterEvent(sock_dir, opts={"salt_version": version}) as event,
            ):
                assert salt.fire(firer, [(f"{prefix}/e", {"n": n}) for n in range(2)]) == [
                    True,
                    True,
                ]
                assert len(receive_under(listener, f"{prefix}/e", 2)) == 2
                assert event.get_event(wait=WAIT, tag=f"{prefix}/e") is not None
                for cli in (a, b):
                    code, out, err = cli.wait()
                    assert code == 0 and len(out.splitlines()) == 2, (out, err)
        finally:
            salt.close_event(firer)
        time.sleep(0.3)  # what a listener wrote last would be parsed by now
        log = publisher.stderr()
        assert not any(sign in log for sign in SALT_TRACEBACK_SIGNS), log

        # The check can fail: what a 3006-framed saltbus listener would say (a length
        # prefix before its Subscribe frame) makes this Salt log a traceback.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(sock_dir / "master_event_pub.ipc"))
            raw.sendall(encode_control(Subscribe(), Framing.LENGTH_PREFIXED))
            deadline = time.monotonic() + WAIT
            while "Exception parsing" not in publisher.stderr():
                assert time.monotonic() < deadline, "Salt logged nothing for a bad write"
                time.sleep(0.05)


def test_stale_lock_of_a_killed_saltbus_does_not_make_salt_look_like_saltbus(
    sock_dir: Path, drivers: DriverPool
) -> None:
    """``saltbus serve`` killed with SIGKILL leaves its lock file; the Salt publisher
    started there afterwards must still be treated as Salt's: saltbus's listeners write
    nothing to it (no subscription it would choke on, no wait for an answer)."""
    with saltbus_daemon(sock_dir, "3007") as daemon:
        daemon.kill()
    lock = sock_dir / ".master_event.saltbus.lock"
    assert lock.exists()
    salt = drivers.get("3008")
    prefix = "it/stale-lock"
    with salt_publisher_with_log("3008", sock_dir, "master") as publisher:
        firer = salt.open(sock_dir, listen=False)
        # Set to 3006, a listener that took Salt for saltbus would write a length-prefixed
        # Subscribe frame, which Salt 3008 logs as a traceback.
        config = publisher.config("3006")
        try:
            started = time.monotonic()
            with Listener(config, tag=prefix) as listener:
                # A saltbus publisher would have confirmed the subscription; Salt is not waited for.
                assert time.monotonic() - started < 1.5
                assert salt.fire(firer, [(f"{prefix}/e", {})]) == [True]
                assert len(receive_under(listener, f"{prefix}/e", 1)) == 1
        finally:
            salt.close_event(firer)
        time.sleep(0.3)
        log = publisher.stderr()
        assert not any(sign in log for sign in SALT_TRACEBACK_SIGNS), log
        assert not config.served_by_saltbus()


def test_listener_warns_when_the_generation_does_not_match(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener set to 3007 on Salt 3006's bus still receives (it detects the
    framing), and says that events it would fire there are dropped."""
    caplog.set_level(logging.WARNING, "saltbus.client")
    with salt_publisher("3006", sock_dir):
        config = Config.load(env={}, overrides={"sock_dir": sock_dir, "salt_version": "3007"})
        with Listener(config, "mismatch/") as listener:
            salt_fire("3006", sock_dir, "mismatch/evt", {"x": 1})
            event = listener.receive(timeout=30)
    assert event is not None and event.data["x"] == 1
    assert any("salt_version is 3007" in r.message for r in caplog.records)
