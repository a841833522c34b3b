"""saltbus.reactor.engine against a real bus in this process: conditions,
throttling, failures, refusals, the loop guard, reload, catch-up (a full
queue: test_reactor_pool)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from saltbus.cli import serve as serve_command
from saltbus.client.aio import AsyncClient, Subscription
from saltbus.config import Config
from saltbus.errors import BusError, BusTimeoutError
from saltbus.event import Event
from saltbus.reactor import Reactor, load_rules
from saltbus.reactor.causes import CAUSE_KEY
from saltbus.reactor.rules import Rules
from saltbus.server import EmbeddedPublisher, Server

WAIT = 20.0


def setup(
    bus_config: Config,
    tmp_path: Path,
    files: dict[str, str],
    globs: dict[str, list[str]],
    **opts: Any,
) -> Config:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    reactor = [{glob: [str(tmp_path / f) for f in names]} for glob, names in globs.items()]
    return bus_config.replace(reactor=reactor, **opts)


@contextlib.asynccontextmanager
async def running(
    config: Config, loader: Callable[[], tuple[Config, Any]] | None = None
) -> AsyncIterator[tuple[Reactor, AsyncClient, Subscription]]:
    reactor = Reactor(config, load_rules(config), loader=loader)
    client = AsyncClient(config)
    reports = client.subscribe("saltbus/reactor/")
    await client.connect(5)
    await reactor.start()
    try:
        yield reactor, client, reports
    finally:
        await reactor.stop()
        await client.close()


async def collect(sub: Subscription, count: int, timeout: float = WAIT) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        events.append(await sub.next(max(0.0, deadline - time.monotonic())))
    return events


async def nothing_more(sub: Subscription, seconds: float = 0.5) -> None:
    with pytest.raises(BusTimeoutError):
        extra = await sub.next(seconds)
        raise AssertionError(f"unexpected {extra}")


def by_reaction(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event.data["reaction"]] = counts.get(event.data["reaction"], 0) + 1
    return counts


@pytest.mark.usefixtures("publisher")
def test_when_condition_filters(
    bus_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = setup(
        bus_config,
        tmp_path,
        {
            "a.sls": "crit:\n  event.send:\n    - tag: alert/{{ data['n'] }}\n"
            "  when: data.level == 'crit'\n"
        },
        {"log/*": ["a.sls"]},
    )

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            for n in range(10):
                await client.fire(f"log/{n}", {"n": n, "level": "crit" if n % 2 else "info"})
            rets = await collect(reports, 5)
            await nothing_more(reports)
            assert sorted(e.data["result"]["tag"] for e in rets) == [
                f"alert/{n}" for n in (1, 3, 5, 7, 9)
            ]
            assert reactor.stats.filtered == 5
            assert reactor.stats.skipped_by_when == {"crit": 5}

    with caplog.at_level("DEBUG", logger="saltbus.reactor"):
        asyncio.run(main())
    skips = [r.getMessage() for r in caplog.records if "skipped for" in r.getMessage()]
    assert len(skips) == 5, skips
    assert skips[0].startswith(f"crit ({tmp_path / 'a.sls'}:1) skipped for log/0 (seq ")
    assert skips[0].endswith("when: data.level == 'crit' is false")


@pytest.mark.usefixtures("publisher")
def test_throttling_a_burst_of_100_with_and_without_group_by(
    bus_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "once:\n  event.send:\n    - tag: t/once\n  once_within: 1h\n"
        "per_host:\n  event.send:\n    - tag: t/host\n  once_within: 1h\n  group_by: [host]\n"
    )
    config = setup(bus_config, tmp_path, {"t.sls": text}, {"burst": ["t.sls"]})

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            for n in range(100):
                await client.fire("burst", {"n": n, "host": f"web{n % 5}"})
            rets = await collect(reports, 6)
            await nothing_more(reports)
            assert by_reaction(rets) == {"once": 1, "per_host": 5}
            assert reactor.stats.throttled == 99 + 95
            assert reactor.stats.skipped_by_throttle == {"once": 99, "per_host": 95}
            assert "skipped by once_within: once 99, per_host 95" in str(reactor.stats)

    with caplog.at_level("DEBUG", logger="saltbus.reactor"):
        asyncio.run(main())
    skips = [r.getMessage() for r in caplog.records if "(once_within)" in r.getMessage()]
    assert len(skips) == 99 + 95
    assert sum(m.startswith("once (") and m.endswith("(once_within)") for m in skips) == 99
    assert sum(m.endswith('(once_within) for host="web3"') for m in skips) == 19


@pytest.mark.usefixtures("publisher")
def test_failures_and_unreachable_salt_are_error_ret_events(
    bus_config: Config, tmp_path: Path
) -> None:
    text = (
        "broken:\n  cmd.run:\n    - cmd: [sh, -c, 'echo bad >&2; exit 3']\n"
        "orchestrate:\n  runner.state.orchestrate:\n    - args:\n      - mods: orch.deploy\n"
        "bad_when:\n  event.send:\n    - tag: x\n  when: data['missing'] > 1\n"
    )
    config = setup(
        bus_config,
        tmp_path,
        {"f.sls": text},
        {"go": ["f.sls"]},
        salt_python=tmp_path / "no-python",
    )

    async def main() -> None:
        async with running(config) as (_reactor, client, reports):
            sent = await client.fire("go", {}, ack=True)
            rets = {e.tag: e.data for e in await collect(reports, 3)}
        broken = rets["saltbus/reactor/broken/ret"]
        assert broken["success"] is False
        assert broken["error"] == "command exited with status 3"
        assert broken["result"] == {"retcode": 3, "stdout": "", "stderr": "bad\n"}
        assert (broken["trigger_tag"], broken["trigger_seq"]) == ("go", sent.seq)
        assert broken["duration"] > 0 and broken["file"] == f"{tmp_path / 'f.sls'}:1"
        refused = rets["saltbus/reactor/orchestrate/ret"]
        assert refused["success"] is False and "result" not in refused
        assert "salt_python" in refused["error"] and "is not an executable" in refused["error"]
        assert "when:" in rets["saltbus/reactor/bad_when/ret"]["error"]

    asyncio.run(main())


@pytest.mark.usefixtures("publisher")
def test_loop_guard_stops_a_reaction_that_triggers_itself(
    bus_config: Config, tmp_path: Path
) -> None:
    text = "again:\n  event.send:\n    - tag: loop/ping\n    - data: {n: '{{ data.n }}'}\n"
    config = setup(
        bus_config, tmp_path, {"l.sls": text}, {"loop/*": ["l.sls"]}, reactor_max_depth=3
    )

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            await client.fire("loop/ping", {"n": 1})
            events = await collect(reports, 4)
            await nothing_more(reports)
        rets = [e for e in events if e.tag.endswith("/ret")]
        (loop,) = [e for e in events if e.tag == "saltbus/reactor/loop"]
        assert len(rets) == 3 and all(e.data["success"] for e in rets)
        assert sorted(e.data[CAUSE_KEY]["depth"] for e in rets) == [1, 2, 3]
        assert loop.data["depth"] == 3 and loop.data["max_depth"] == 3
        assert loop.data["reactions"] == ["again"]
        assert [c["reaction"] for c in loop.data["chain"]] == ["again"] * 3
        assert reactor.stats.stopped == 1

    asyncio.run(main())


@pytest.mark.usefixtures("publisher")
def test_render_errors_are_reported_with_file_and_line(bus_config: Config, tmp_path: Path) -> None:
    text = "a:\n  event.send:\n    - tag: x\n    - data: {{ data['n'] + 1 }}\n"
    config = setup(bus_config, tmp_path, {"e.sls": text}, {"e": ["e.sls"]})

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            await client.fire("e", {"n": "text"})
            (error,) = await collect(reports, 1)
        assert error.tag == "saltbus/reactor/error"
        assert error.data["file"] == str(tmp_path / "e.sls") and error.data["line"] == 4
        assert "TypeError" in error.data["error"] and error.data["trigger_tag"] == "e"
        assert reactor.stats.render_errors == 1

    asyncio.run(main())


@pytest.mark.usefixtures("publisher")
def test_reload_swaps_rules_and_a_bad_one_keeps_the_old(bus_config: Config, tmp_path: Path) -> None:
    config = setup(
        bus_config, tmp_path, {"r.sls": "old:\n  event.send: [{tag: x}]\n"}, {"r": ["r.sls"]}
    )

    def loader() -> tuple[Config, Any]:
        return config, load_rules(config)

    async def main() -> None:
        async with running(config, loader) as (reactor, client, reports):
            (tmp_path / "r.sls").write_text("new:\n  event.send: [{tag: x}]\n")
            reactor.request_reload()
            (reloaded,) = await collect(reports, 1)
            assert reloaded.tag == "saltbus/reactor/reload" and reloaded.data["success"]
            await client.fire("r", {})
            (ret,) = await collect(reports, 1)
            assert ret.tag == "saltbus/reactor/new/ret"
            (tmp_path / "r.sls").write_text("broken:\n  event.send: [{tag: x}]\n   - oops\n")
            reactor.request_reload()
            (failed,) = await collect(reports, 1)
            assert failed.data["success"] is False
            assert f"{tmp_path / 'r.sls'}:3: YAML" in failed.data["error"]
            await client.fire("r", {})
            (ret,) = await collect(reports, 1)
            assert ret.tag == "saltbus/reactor/new/ret"

    asyncio.run(main())


def test_catch_up_after_a_stop_exactly_once(
    bus_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "count:\n  cmd.run:\n    - cmd: [sh, -c, 'echo {{ data.n }} >> %s']\n" % (
        tmp_path / "out"
    )
    config = setup(bus_config, tmp_path, {"c.sls": text}, {"n": ["c.sls"]})
    out = tmp_path / "out"

    async def handled(count: int) -> list[int]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            lines = out.read_text().split() if out.exists() else []
            if len(lines) >= count:
                return sorted(map(int, lines))
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {out.read_text() if out.exists() else ''!r}")

    async def main() -> None:
        async with AsyncClient(config) as client:
            async with running(config):
                for n in range(10):
                    await client.fire("n", {"n": n})
                assert await handled(10) == list(range(10))
            for n in range(10, 60):  # the reactor is down
                fired_last = (await client.fire("n", {"n": n}, ack=True)).seq
            async with running(config) as (reactor, _c, _r):
                assert reactor.caught_up_from is not None
                backlog = reactor.backlog
                # The 50 fired while it was down, and any ret event fired after its mark.
                assert backlog is not None and backlog.first == reactor.caught_up_from + 1
                assert backlog.events >= 50 and backlog.last == fired_last
                assert await handled(60) == list(range(60))
                await asyncio.sleep(0.3)
            assert len(out.read_text().split()) == 60

    with EmbeddedPublisher(config), caplog.at_level("INFO", logger="saltbus.reactor"):
        asyncio.run(main())
    (line,) = [r.getMessage() for r in caplog.records if "catching up" in r.getMessage()]
    assert re.fullmatch(
        r"catching up \d+ events from seq \d+ to \d+ \(oldest \d\d:\d\d:\d\d, \d+ s ago\)", line
    ), line


@pytest.mark.usefixtures("publisher")
def test_two_reactors_with_one_name_are_refused(bus_config: Config, tmp_path: Path) -> None:
    config = setup(bus_config, tmp_path, {"r.sls": ""}, {"r": ["r.sls"]})

    async def main() -> None:
        async with running(config):
            with pytest.raises(BusError, match="already runs"):
                await Reactor(config, load_rules(config)).start()
            async with running(config.replace(reactor_name="other")):
                pass

    asyncio.run(main())


def test_no_catch_up_starts_with_new_events(bus_config: Config, tmp_path: Path) -> None:
    text = "r:\n  event.send: [{tag: 'seen/{{ data.n }}'}]\n"
    config = setup(bus_config, tmp_path, {"r.sls": text}, {"n": ["r.sls"]})

    async def main() -> None:
        async with AsyncClient(config) as client:
            async with running(config) as (_r, _c, reports):
                await client.fire("n", {"n": 0})
                await collect(reports, 1)
            for n in range(1, 6):  # missed while it is down
                await client.fire("n", {"n": n}, ack=True)
            no_catch_up = config.replace(reactor_catch_up=False)
            async with running(no_catch_up) as (reactor, _c, reports):
                assert reactor.caught_up_from is None
                await client.fire("n", {"n": 6})
                (ret,) = await collect(reports, 1)
                assert ret.data["result"] == {"tag": "seen/6"}
                await nothing_more(reports)
            # Its position moved on: a later start with catch-up does not replay 1-5.
            async with running(config) as (reactor, _c, reports):
                assert reactor.caught_up_from is not None and reactor.caught_up_from >= 7
                await nothing_more(reports)

    with EmbeddedPublisher(config):
        asyncio.run(main())


def one_reaction(bus_config: Config, tmp_path: Path) -> Config:
    """A reactor that answers every e/* event with one event.send."""
    return setup(
        bus_config, tmp_path, {"r.sls": "ok:\n  event.send: [{tag: x}]\n"}, {"e/*": ["r.sls"]}
    )


async def broken_next(self: Subscription, timeout: float | None = None) -> Event:
    """Subscription.next as if the client had a bug."""
    raise RuntimeError("the subscription broke")


@pytest.mark.usefixtures("publisher")
def test_an_event_the_reactor_fails_on_is_logged_and_the_next_handled(
    bus_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = one_reaction(bus_config, tmp_path)
    match = Rules.match

    def failing_match(self: Rules, tag: str) -> list[Any]:
        if tag == "e/bad":
            raise RuntimeError("a bug in matching")
        return match(self, tag)

    monkeypatch.setattr(Rules, "match", failing_match)

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            await client.fire("e/bad", {})
            await client.fire("e/good", {})
            (ret,) = await collect(reports, 1)
            assert ret.data["trigger_tag"] == "e/good" and ret.data["success"]
            assert reactor.stats.internal_errors == 1
            assert reactor.failure is None

    with caplog.at_level("ERROR", logger="saltbus.reactor"):
        asyncio.run(main())
    assert "reactor failed on e/bad" in caplog.text and "a bug in matching" in caplog.text


@pytest.mark.usefixtures("publisher")
def test_a_reactor_whose_reading_task_dies_says_so_and_stops(
    bus_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = one_reaction(bus_config, tmp_path)

    async def main() -> None:
        async with running(config) as (reactor, _client, _reports):
            monkeypatch.setattr(Subscription, "next", broken_next)
            await asyncio.wait_for(reactor.wait_for_stop(), WAIT)
            assert reactor.failure is not None
            assert "reactor-ingest ended: RuntimeError('the subscription broke')" in reactor.failure
            with pytest.raises(BusError, match="the reactor stopped: reactor-ingest ended"):
                reactor.raise_if_failed()

    with caplog.at_level("CRITICAL", logger="saltbus.reactor"):
        asyncio.run(main())
    assert "reactor stops: reactor-ingest ended" in caplog.text


def test_serve_stops_when_its_reactor_dies(
    bus_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = one_reaction(bus_config, tmp_path)

    async def main() -> None:
        async with Server(config) as server:
            reactor = Reactor(config, load_rules(config))
            monkeypatch.setattr(Subscription, "next", broken_next)
            await reactor.start()
            try:
                waiting = serve_command._until_exit_or_reactor_failure(server, reactor)
                await asyncio.wait_for(waiting, WAIT)  # the server was not asked to exit
            finally:
                await reactor.stop()
            assert reactor.failure is not None

    asyncio.run(main())
