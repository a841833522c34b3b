"""Salt's job metrics, counted from job events shaped as Salt fires them."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from saltbus.event import Event
from saltbus.metrics.salt_jobs import JobMetricsOptions, SaltJobMetrics, state_of, succeeded


def new(jid: str, fun: str, arg: list[Any], minions: list[str]) -> Event:
    data = {"jid": jid, "fun": fun, "arg": arg, "minions": minions, "tgt": "*", "user": "root"}
    return Event(f"salt/job/{jid}/new", data)


def ret(jid: str, minion: str, fun: str, retcode: int, **extra: Any) -> Event:
    data = {
        "cmd": "_return",
        "id": minion,
        "jid": jid,
        "fun": fun,
        "fun_args": extra.pop("fun_args", []),
        "return": True,
        "retcode": retcode,
        "success": retcode == 0,
    } | extra
    return Event(f"salt/job/{jid}/ret/{minion}", data)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_new_jobs_and_returns() -> None:
    registry = CollectorRegistry()
    jobs = SaltJobMetrics(registry)
    events = [
        new("1", "test.ping", [], ["m1", "m2"]),
        ret("1", "m1", "test.ping", 0),
        ret("1", "m2", "test.ping", 0),
        new("2", "cmd.run", ["exit 3"], ["m1"]),
        ret("2", "m1", "cmd.run", 3, fun_args=["exit 3"]),
        new("3", "saltutil.find_job", ["1"], ["m1"]),
        Event("salt/auth", {"id": "m1"}),
        Event("salt/job/4/prog/m1/0", {"fun": "state.sls"}),
    ]
    counted = [jobs.observe(e) for e in events]
    assert counted == [True, True, True, True, True, False, False, False]
    assert value(registry, "salt_new_job_total", function="test.ping", state="") == 1
    assert value(registry, "salt_expected_responses_total", function="test.ping", state="") == 2
    assert (
        value(
            registry,
            "salt_function_responses_total",
            function="test.ping",
            state="",
            success="true",
        )
        == 2
    )
    assert (
        value(
            registry, "salt_function_responses_total", function="cmd.run", state="", success="false"
        )
        == 1
    )
    assert value(registry, "salt_responses_total", minion="m1", success="true") == 1
    assert value(registry, "salt_responses_total", minion="m1", success="false") == 1
    assert value(registry, "salt_responses_total", minion="m2", success="true") == 1
    # Salt's own polling job is not the user's.
    assert value(registry, "salt_new_job_total", function="saltutil.find_job", state="") is None


def test_scheduled_returns_and_the_status_of_watched_functions() -> None:
    registry = CollectorRegistry()
    jobs = SaltJobMetrics(registry)
    jobs.observe(ret("5", "m1", "state.highstate", 0, schedule="nightly"))
    jobs.observe(ret("6", "m2", "state.highstate", 2, schedule="nightly"))
    jobs.observe(ret("7", "m1", "test.ping", 0, schedule="ping"))
    labels = {"function": "state.highstate", "state": "highstate"}
    assert (
        value(registry, "salt_scheduled_job_return_total", minion="m1", success="true", **labels)
        == 1
    )
    assert (
        value(registry, "salt_scheduled_job_return_total", minion="m2", success="false", **labels)
        == 1
    )
    assert value(registry, "salt_function_status", minion="m1", **labels) == 1
    assert value(registry, "salt_function_status", minion="m2", **labels) == 0
    # Scheduled returns are responses, not responses to the master's jobs.
    assert value(registry, "salt_responses_total", minion="m1", success="true") == 2
    assert value(registry, "salt_function_responses_total", success="true", **labels) is None
    # Only watched functions have a status.
    assert (
        value(registry, "salt_function_status", minion="m1", function="test.ping", state="") is None
    )
    jobs.observe(ret("8", "m2", "state.highstate", 0))
    assert value(registry, "salt_function_status", minion="m2", **labels) == 1


def test_dropped_labels_and_chosen_status_functions() -> None:
    registry = CollectorRegistry()
    options = JobMetricsOptions(drop_labels=frozenset({"minion"}), status_functions=("cmd.run",))
    jobs = SaltJobMetrics(registry, options)
    jobs.observe(ret("1", "m1", "cmd.run", 0))
    jobs.observe(ret("2", "m2", "cmd.run", 1))
    jobs.observe(ret("3", "m3", "cmd.run", 0))
    assert value(registry, "salt_responses_total", success="true") == 2
    assert value(registry, "salt_responses_total", success="false") == 1
    # The last return of the function, whichever minion sent it.
    assert value(registry, "salt_function_status", function="cmd.run", state="") == 1
    with pytest.raises(ValueError, match="cannot drop labels"):
        JobMetricsOptions(drop_labels=frozenset({"success"}))


def test_function_status_can_be_off() -> None:
    registry = CollectorRegistry()
    jobs = SaltJobMetrics(registry, JobMetricsOptions(status_functions=()))
    jobs.observe(ret("1", "m1", "state.highstate", 0))
    assert (
        value(
            registry,
            "salt_function_status",
            minion="m1",
            function="state.highstate",
            state="highstate",
        )
        is None
    )


@pytest.mark.parametrize(
    ("fun", "args", "state"),
    [
        ("state.sls", ["webserver"], "webserver"),
        ("state.sls", [["a", "b"]], "a,b"),
        ("state.apply", [], "highstate"),
        ("state.apply", [{"__kwarg__": True, "test": True}], "highstate"),
        ("state.apply", [{"mods": "db", "__kwarg__": True}], "db"),
        ("state.apply", ["mods=db"], "db"),
        ("state.highstate", [], "highstate"),
        ("state.single", ["test.nop", "name=x"], "test.nop"),
        ("cmd.run", ["ls"], ""),
    ],
)
def test_state_label(fun: str, args: list[Any], state: str) -> None:
    assert state_of(fun, args) == state


def test_success_needs_success_and_a_zero_retcode() -> None:
    assert succeeded({"success": True, "retcode": 0})
    assert not succeeded({"success": True, "retcode": 2})
    assert not succeeded({"success": False, "retcode": 0})
    assert succeeded({"retcode": 0})
    assert not succeeded({"retcode": 1})
