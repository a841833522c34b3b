"""saltbus.reactor.retry: a reaction's `retry:` read and checked, and run by a
reactor on a real bus in this process: each failed run is an outcome event
(attempt, retrying_in, and gave_up on the last), a waiting retry does not hold
a worker, a reaction that starts to work succeeds at a later attempt, and a
clean stop reports the retries still waiting. Salt's reactions against a
master that is down, then started: tests/interop/test_interop_salt_reactions.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from saltbus.client.aio import AsyncClient
from saltbus.config import Config
from saltbus.event import Event
from saltbus.reactor import Reactor, load_rules
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.retry import RetryPolicy
from saltbus.reactor.spec import parse_reactions
from tests.test_reactor_engine import collect, setup

WAIT = 20.0


def parse(text: str) -> Any:
    doc = yaml.safe_load(text)
    return parse_reactions(doc, Path("r.sls"), {name: 1 for name in doc})


def test_retry_is_read_for_saltbus_and_salt_reactions() -> None:
    own, salt, short, none = parse(
        "own:\n  cmd.run:\n    - cmd: [x]\n  retry: {attempts: 4, delay: 500ms, factor: 3, "
        "max_delay: 2s}\n"
        "salt:\n  local.test.ping:\n    - tgt: web1\n    - retry: {attempts: 2, delay: 1m}\n"
        "short:\n  event.send:\n    - tag: t\n    - retry: 3\n"
        "none:\n  event.send: [{tag: t}]\n"
    )
    assert own.retry == RetryPolicy(4, 0.5, 3.0, 2.0)
    assert [own.retry.wait_after(n) for n in (1, 2, 3)] == [0.5, 1.5, 2.0]
    assert salt.retry == RetryPolicy(2, 60.0, 2.0, 60.0)
    assert "retry" not in salt.options["kwarg"]  # saltbus's key, not Salt's argument
    assert short.retry == RetryPolicy(3)
    assert none.retry is None


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        ("0", "attempts must be 1 or more (the first run included), not 0"),
        ("{attempts: 2, tries: 3}", "retry: unknown key tries (it takes attempts, delay"),
        ("{delay: 1s}", "attempts must be 1 or more (the first run included), not None"),
        ("{attempts: 2, factor: 0.5}", "factor must be a number of 1 or more, not 0.5"),
        ("{attempts: 2, delay: soon}", "retry: delay: 'soon' is not a positive duration"),
        ("{attempts: 2, delay: 1m, max_delay: 5s}", "max_delay (5 s) is shorter than delay"),
        ("[3]", "retry must be a number of attempts or {attempts, delay, factor, max_delay}"),
    ],
)
def test_a_bad_retry_names_the_file_line_and_reaction(retry: str, message: str) -> None:
    with pytest.raises(ReactionFileError) as caught:
        parse(f"r:\n  cmd.run:\n    - cmd: [x]\n  retry: {retry}\n")
    assert str(caught.value).startswith("r.sls:1: reaction 'r': ")
    assert message in str(caught.value)


def rets(events: list[Event], name: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.data.get("reaction") == name]


@pytest.mark.usefixtures("publisher")
def test_failed_runs_are_retried_without_holding_a_worker(
    bus_config: Config, tmp_path: Path
) -> None:
    """One worker: a retry that waited in it would hold back `other`."""
    marker = tmp_path / "up"
    config = setup(
        bus_config,
        tmp_path,
        {
            "r.sls": f"flaky:\n  cmd.run:\n    - cmd: [test, -e, {marker}]\n"
            "  retry: {attempts: 20, delay: 1s, factor: 1}\n"
            "hopeless:\n  cmd.run: [{cmd: [sh, -c, 'exit 3']}]\n"
            "  retry: {attempts: 3, delay: 100ms}\n",
            "o.sls": "other:\n  event.send: [{tag: app/other/done}]\n",
        },
        {"app/go": ["r.sls"], "app/other": ["o.sls"]},
        reactor_worker_threads=1,
    )

    async def main() -> None:
        reactor = Reactor(config, load_rules(config))
        async with AsyncClient(config) as client:
            reports = client.subscribe("saltbus/reactor/")
            await client.connect(5)
            await reactor.start()
            try:
                go = await client.fire("app/go", {}, ack=True)
                first = await collect(reports, 2)
                assert {e.data["reaction"] for e in first} == {"flaky", "hopeless"}
                await client.fire("app/other", {})
                # `other` runs while flaky's retry waits (1 s, factor 1).
                nxt = await reports.next(WAIT)
                while nxt.data["reaction"] == "hopeless":
                    first.append(nxt)
                    nxt = await reports.next(WAIT)
                assert nxt.data["reaction"] == "other" and nxt.data["success"] is True
                assert reactor.stats_dict()["retries_waiting"] >= 1  # flaky's at least
                # While flaky is retried its event stays in flight: a crash now
                # would run it again after a restart.
                position = reactor.journal_position()
                assert position is not None and position < (go.seq or 0)
                marker.touch()  # the thing it needs is there now
                events = first
                while not any(e.get("success") for e in rets(events, "flaky")):
                    events.append(await reports.next(WAIT))
                stats = reactor.stats_dict()
            finally:
                await reactor.stop()
        flaky = rets(events, "flaky")
        assert all(r["success"] is False for r in flaky[:-1]) and len(flaky) >= 2
        assert [r["attempt"] for r in flaky] == list(range(1, len(flaky) + 1))
        assert all(r["retrying_in"] == 1.0 and r["attempts"] == 20 for r in flaky[:-1])
        assert flaky[-1]["success"] is True and "gave_up" not in flaky[-1]
        assert "retrying_in" not in flaky[-1]
        hopeless = rets(events, "hopeless")
        assert [(r["attempt"], r.get("retrying_in"), r.get("gave_up")) for r in hopeless] == [
            (1, 0.1, None),
            (2, 0.2, None),
            (3, None, True),
        ]
        assert hopeless[-1]["error"] == "command exited with status 3"
        assert stats["gave_up"] == 1
        assert stats["retried"] == len(flaky) - 1 + 2
        assert stats["outcomes"]["hopeless"] == {"failed": 3}

    asyncio.run(main())


@pytest.mark.usefixtures("publisher")
def test_a_clean_stop_reports_the_retries_still_waiting(
    bus_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = setup(
        bus_config,
        tmp_path,
        {"r.sls": "later:\n  cmd.run: [{cmd: ['false']}]\n  retry: {attempts: 5, delay: 1h}\n"},
        {"app/go": ["r.sls"]},
    )

    async def main() -> None:
        reactor = Reactor(config, load_rules(config))
        async with AsyncClient(config) as client:
            reports = client.subscribe("saltbus/reactor/")
            await client.connect(5)
            await reactor.start()
            try:
                go = await client.fire("app/go", {}, ack=True)
                [failed] = await collect(reports, 1)
                assert failed.data["retrying_in"] == 3600.0
                position = reactor.journal_position()
                assert position is not None and position < (go.seq or 0)  # in flight
            finally:
                await reactor.stop()
            [stopped] = await collect(reports, 1)
        assert stopped.data["reaction"] == "later" and stopped.data["success"] is False
        assert stopped.data["gave_up"] is True and stopped.data["stopped"] is True
        assert stopped.data["attempt"] == 1 and stopped.data["trigger_seq"] == go.seq
        assert stopped.data["error"].startswith("not retried: the reactor stopped ")
        assert " s before attempt 2 of 5" in stopped.data["error"]
        assert "saltbus history --refire" in stopped.data["error"]
        assert reactor.stats.retries_stopped == 1
        assert reactor.stats.outcomes["later"] == {"failed": 1}  # one run, one failure
        # Reported, so no longer in flight: a restart does not run it again.
        position = reactor.journal_position()
        assert position is not None and position >= (go.seq or 0)

    with caplog.at_level("WARNING", logger="saltbus.reactor"):
        asyncio.run(main())
    assert any("not retried: the reactor stops" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("publisher")
def test_a_locked_reaction_retries_holding_its_lock(bus_config: Config, tmp_path: Path) -> None:
    """The second event's reaction (same lock) must not overtake the first's retries."""
    marker = tmp_path / "up"
    config = setup(
        bus_config,
        tmp_path,
        {
            "r.sls": "deploy:\n  cmd.run:\n"
            f"    - cmd: [sh, -c, 'test {{{{ data[\"n\"] }}}} = 2 || test -e {marker}']\n"
            "  retry: {attempts: 20, delay: 200ms, factor: 1}\n"
            "  lock: deploy\n",
        },
        {"app/deploy": ["r.sls"]},
        reactor_worker_threads=2,
    )

    async def main() -> None:
        reactor = Reactor(config, load_rules(config))
        async with AsyncClient(config) as client:
            reports = client.subscribe("saltbus/reactor/deploy/")
            await client.connect(5)
            await reactor.start()
            try:
                first = await client.fire("app/deploy", {"n": 1}, ack=True)
                await client.fire("app/deploy", {"n": 2}, ack=True)
                events = [await reports.next(WAIT) for _ in range(3)]
                marker.touch()
                while not any(e.data["success"] for e in events):
                    events.append(await reports.next(WAIT))
                events.append(await reports.next(WAIT))  # the second event's run
            finally:
                await reactor.stop()
        triggers = [(e.data["trigger_seq"], e.data["success"]) for e in events]
        # Every run for the first event (failed ones, then its success) comes
        # before the second event's single run.
        assert triggers[-1] == (first.seq + 1, True), triggers
        assert all(seq == first.seq for seq, _ in triggers[:-1]), triggers
        assert [ok for _, ok in triggers[:-1]] == [False] * (len(triggers) - 2) + [True]

    asyncio.run(main())
