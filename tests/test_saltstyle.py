"""Salt's API (MasterEvent & co.) against an in-process publisher."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import saltbus
from saltbus.client import saltstyle
from saltbus.config import Config
from saltbus.control import Nack, encode_control
from saltbus.server import EmbeddedPublisher
from saltbus.wire import Framing
from tests.firing_support import stand_in


@pytest.fixture
def event(bus_config: Config, publisher: EmbeddedPublisher) -> Iterator[saltbus.MasterEvent]:
    with saltbus.MasterEvent(bus_config.sock_dir) as ev:
        yield ev


@pytest.fixture
def firer(bus_config: Config, publisher: EmbeddedPublisher) -> Iterator[saltbus.MasterEvent]:
    with saltbus.MasterEvent(bus_config.sock_dir, listen=False) as ev:
        yield ev


def test_get_event_returns_the_data_dict(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    assert firer.fire_event({"id": "web1", "act": "accept"}, "salt/auth") is True
    data = event.get_event(wait=5)
    assert data is not None
    assert data["id"] == "web1" and data["act"] == "accept"
    assert "_stamp" in data


def test_full_gives_tag_data_and_seq(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    firer.fire_event({"n": 1}, "a/b")
    firer.fire_event({"n": 2}, "a/b")
    first = event.get_event(wait=5, full=True)
    second = event.get_event(wait=5, full=True)
    assert first is not None and second is not None
    assert first["tag"] == "a/b" and first["data"]["n"] == 1
    assert second["seq"] == first["seq"] + 1


def test_get_event_times_out_with_none(event: saltbus.MasterEvent):
    started = time.monotonic()
    assert event.get_event(wait=0.2) is None
    assert 0.15 < time.monotonic() - started < 3


def test_no_block_polls_once(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    assert event.get_event(no_block=True) is None
    firer.fire_event({"x": 1}, "t/1")
    deadline = time.monotonic() + 5
    got = None
    while got is None and time.monotonic() < deadline:
        got = event.get_event(no_block=True)
    assert got is not None and got["x"] == 1


def test_wait_zero_blocks_until_an_event(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    timer = threading.Timer(0.3, firer.fire_event, args=({"late": True}, "late/one"))
    timer.start()
    try:
        data = event.get_event(wait=0)
    finally:
        timer.join()
    assert data is not None and data["late"] is True


def test_tag_filter_skips_other_events(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    firer.fire_event({"n": 1}, "other/x")
    firer.fire_event({"n": 2}, "salt/auth")
    data = event.get_event(wait=5, tag="salt/auth", full=True)
    assert data is not None and data["tag"] == "salt/auth" and data["data"]["n"] == 2


@pytest.mark.parametrize(
    ("match_type", "pattern", "wanted"),
    [
        ("startswith", "salt/job", "salt/job/1/ret/web1"),
        ("endswith", "/start", "salt/minion/web1/start"),
        ("find", "minion", "salt/minion/web1/start"),
        ("regex", r"salt/job/\d+/ret", "salt/job/1/ret/web1"),
        ("fnmatch", "salt/*/web1/start", "salt/minion/web1/start"),
    ],
)
def test_match_types(
    event: saltbus.MasterEvent,
    firer: saltbus.MasterEvent,
    match_type: str,
    pattern: str,
    wanted: str,
):
    for tag in ("noise/a", "salt/other/b", wanted):
        firer.fire_event({"tag_was": tag}, tag)
    data = event.get_event(wait=5, tag=pattern, match_type=match_type, full=True)
    assert data is not None and data["tag"] == wanted


def test_event_match_type_from_opts(bus_config: Config, publisher: EmbeddedPublisher):
    opts = {"event_match_type": "fnmatch", "unrelated_salt_option": 1}
    with (
        saltbus.MasterEvent(bus_config.sock_dir, opts=opts) as ev,
        saltbus.MasterEvent(bus_config.sock_dir, listen=False) as firer,
    ):
        firer.fire_event({}, "salt/key")
        firer.fire_event({}, "app/x/done")
        data = ev.get_event(wait=5, tag="app/*/done", full=True)
    assert data is not None and data["tag"] == "app/x/done"


def test_polling_with_tiny_waits_loses_nothing(event: saltbus.MasterEvent, bus_config: Config):
    """Salt loses about a third of these: each timed-out get_event reconnects."""
    total = 2000

    def fire_all() -> None:
        with saltbus.MasterEvent(bus_config.sock_dir, listen=False) as firer:
            for n in range(total):
                firer.fire_event({"n": n}, "poll/evt")
                if n % 20 == 0:
                    time.sleep(0.01)

    thread = threading.Thread(target=fire_all)
    thread.start()
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline:
        data = event.get_event(wait=0.004, tag="poll/")
        if data is not None:
            seen.append(data["n"])
    thread.join()
    assert seen == list(range(total))


def test_iter_events_yields_matching_in_order(
    event: saltbus.MasterEvent, firer: saltbus.MasterEvent
):
    for n in range(5):
        firer.fire_event({"n": n}, "skip/me")
        firer.fire_event({"n": n}, "auth/x")
    got = []
    for data in event.iter_events(tag="auth"):
        got.append(data["n"])
        if len(got) == 5:
            break
    assert got == [0, 1, 2, 3, 4]


def test_subscribe_keeps_events_for_a_later_get(
    event: saltbus.MasterEvent, firer: saltbus.MasterEvent
):
    event.subscribe("b/")
    firer.fire_event({"n": 1}, "b/1")
    firer.fire_event({"n": 2}, "c/1")
    firer.fire_event({"n": 3}, "a/1")
    first = event.get_event(wait=5, tag="a/", full=True)
    assert first is not None and first["tag"] == "a/1"
    cached = event.get_event(no_block=True, tag="b/", full=True)
    assert cached is not None and cached["tag"] == "b/1"
    # c/1 matched no subscription, so it was dropped, as in Salt.
    assert event.get_event(wait=0.2, tag="c/") is None


def test_unsubscribe_trims_the_cache(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    event.subscribe("b/")
    firer.fire_event({}, "b/1")
    firer.fire_event({}, "a/1")
    assert event.get_event(wait=5, tag="a/") is not None
    event.unsubscribe("b/")
    assert event.get_event(wait=0.2, tag="b/") is None


def test_fire_event_rejects_bad_input(firer: saltbus.MasterEvent):
    # ValueError as in Salt; saltbus's LocalProtocolError is one.
    with pytest.raises(saltbus.LocalProtocolError, match="Empty tag"):
        firer.fire_event({}, "")
    with pytest.raises(saltbus.LocalProtocolError, match="Dict object expected"):
        firer.fire_event(["not", "a", "dict"], "a/b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty str tag"):
        firer.fire_event({}, 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be encoded"):
        firer.fire_event({"k": object()}, "a/b")


def test_fire_event_does_not_change_the_callers_dict(
    event: saltbus.MasterEvent, firer: saltbus.MasterEvent
):
    data = {"k": "v"}
    firer.fire_event(data, "a/b")
    assert data == {"k": "v"}
    received = event.get_event(wait=5)
    assert received is not None and set(received) == {"k", "_stamp"}


def test_oversized_event_is_not_sent_and_returns_false(
    bus_config: Config, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, "saltbus.client")
    config = bus_config.replace(max_event_size=1024)
    with (
        EmbeddedPublisher(config),
        saltbus.MasterEvent(config.sock_dir, opts={"max_event_size": 1024}) as ev,
    ):
        # Salt trims oversized data and sends it; saltbus returns False and says why.
        assert ev.fire_event({"blob": "x" * 2048}, "big/one") is False
        assert ev.fire_event({"small": 1}, "small/one") is True
        received = ev.get_event(wait=5, full=True)
    assert received is not None and received["tag"] == "small/one"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fire_event('big/one') returned False" in warnings[0]
    assert "max_event_size (1024 bytes)" in warnings[0]


def test_oversized_event_raises_with_raise_errors(bus_config: Config):
    config = bus_config.replace(max_event_size=1024)
    with (
        EmbeddedPublisher(config),
        saltbus.MasterEvent(
            config.sock_dir, opts={"max_event_size": 1024}, listen=False, raise_errors=True
        ) as ev,
        pytest.raises(saltbus.FrameTooLargeError, match="max_event_size"),
    ):
        ev.fire_event({"blob": "x" * 2048}, "big/one")


def test_fire_event_with_ack_returns_the_seq(bus_config: Config, publisher: EmbeddedPublisher):
    with saltbus.MasterEvent(bus_config.sock_dir, listen=False) as ev:
        assert ev.fire_event({"n": 1}, "a/1", ack=True) == 1
        assert ev.fire_event({"n": 2}, "a/2") is True
        assert ev.fire_event({"n": 3}, "a/3", ack=True) == 3


def test_fire_event_with_ack_returns_false_for_bus_trouble(bus_config: Config):
    def nack(request_id: int) -> bytes:
        return encode_control(Nack(request_id, "disk full"), Framing.BARE)

    with (
        stand_in(bus_config, nack),
        saltbus.MasterEvent(bus_config.sock_dir, listen=False) as ev,
    ):
        assert ev.fire_event({}, "a/b", timeout=5000, ack=True) is False
    with saltbus.MasterEvent(bus_config.sock_dir, listen=False) as ev:
        assert ev.fire_event({}, "a/b", timeout=100, ack=True) is False  # no publisher


def test_fire_event_without_publisher_returns_false(sock_dir: Path):
    with saltbus.MasterEvent(sock_dir, listen=False) as ev:
        started = time.monotonic()
        assert ev.fire_event({"a": 1}, "a/b", timeout=200) is False
        assert time.monotonic() - started < 2


def test_raise_errors_raises_instead(sock_dir: Path):
    with (
        saltbus.MasterEvent(sock_dir, listen=False, raise_errors=True) as ev,
        pytest.raises(saltbus.NoPublisherError, match="no publisher"),
    ):
        ev.fire_event({"a": 1}, "a/b", timeout=100)


def test_get_event_without_publisher_returns_none_after_wait(sock_dir: Path):
    with saltbus.MasterEvent(sock_dir) as ev:
        assert ev.cpub is False
        assert ev.get_event(wait=0.3) is None


def test_auto_reconnect_across_a_publisher_restart(bus_config: Config):
    with saltbus.MasterEvent(bus_config.sock_dir) as ev:
        with EmbeddedPublisher(bus_config):
            assert ev.connect_pub(timeout=5)
            with saltbus.MasterEvent(bus_config.sock_dir, listen=False) as firer:
                firer.fire_event({"n": 1}, "r/1")
            assert ev.get_event(wait=5) is not None
        with EmbeddedPublisher(bus_config):
            timer = threading.Timer(
                0.5,
                lambda: saltbus.MasterEvent(bus_config.sock_dir, listen=False).fire_event(
                    {"n": 2}, "r/2"
                ),
            )
            timer.start()
            try:
                data = None
                deadline = time.monotonic() + 10
                while data is None and time.monotonic() < deadline:
                    data = ev.get_event(wait=5, tag="r/2", auto_reconnect=True)
            finally:
                timer.join()
    assert data is not None and data["n"] == 2


def test_ctrl_c_returns_the_exit_event(event: saltbus.MasterEvent, monkeypatch: pytest.MonkeyPatch):
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(event._listener, "receive", interrupted)
    assert event.get_event(wait=1, full=True) == {"tag": "salt/event/exit", "data": {}}
    assert event.get_event(wait=1) == {}


def test_minion_event_uses_the_minion_sockets(sock_dir: Path):
    opts = {"sock_dir": str(sock_dir / "m"), "id": "web1"}
    config = Config.load(env={}, overrides={**opts, "node": "minion"})
    with EmbeddedPublisher(config), saltbus.MinionEvent(opts) as ev:
        assert ev.fire_event({"x": 1}, "minion/evt") is True
        data = ev.get_event(wait=5, full=True)
    assert data is not None and data["tag"] == "minion/evt"
    names = sorted(p.name for p in Path(opts["sock_dir"]).glob("*.ipc"))
    assert names == []  # removed on shutdown
    assert str(config.pub_address).endswith("_pub.ipc")
    assert "minion_event_" in str(config.pub_address)


def test_factory_returns_master_event(sock_dir: Path):
    ev = saltbus.get_event("master", sock_dir, listen=False)
    assert isinstance(ev, saltbus.MasterEvent)
    ev.destroy()
    other = saltbus.get_event("minion", sock_dir, opts={"id": "m1"}, listen=False)
    assert type(other) is saltbus.SaltEvent and other.node == "minion"
    other.destroy()


def test_salt_version_in_opts_selects_the_framing(bus_config: Config):
    config = bus_config.replace(salt_version="3006")
    with (
        EmbeddedPublisher(config),
        saltbus.MasterEvent(config.sock_dir, opts={"salt_version": "3006"}) as ev,
    ):
        assert ev.config.generation.name == "3006"
        assert ev.fire_event({"gen": 3006}, "gen/evt") is True
        data = ev.get_event(wait=5)
    assert data is not None and data["gen"] == 3006


def test_fire_master_wraps_the_event(event: saltbus.MasterEvent, firer: saltbus.MasterEvent):
    firer.fire_master({"a": 1}, "my/tag")
    data = event.get_event(wait=5, full=True)
    assert data is not None and data["tag"] == "fire_master"
    assert data["data"]["tag"] == "my/tag" and data["data"]["data"] == {"a": 1}


def test_tagify_is_exported():
    assert saltbus.tagify(["abc", "new"], "job") == "salt/job/abc/new"
    assert saltstyle.EXIT_EVENT["tag"] == "salt/event/exit"
