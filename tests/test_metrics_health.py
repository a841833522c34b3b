"""Readiness judged from a publisher's statistics."""

from __future__ import annotations

from typing import Any

from saltbus.metrics.health import Status, readiness, unreachable


def stats(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "journal": "/var/lib/saltbus/master.sqlite3",
        "journal_error": None,
        "returners": [],
    }
    return base | changes


def returner(name: str, lag: int, state: str = "running") -> dict[str, Any]:
    return {"name": name, "lag": lag, "state": state, "last_error": "connection refused"}


def test_a_serving_publisher_with_a_committing_journal_is_ready() -> None:
    result = readiness(stats())
    assert result.ready and result.status is Status.OK
    assert [c.name for c in result.checks] == ["sockets", "journal"]
    assert result.summary().startswith("SALTBUS OK - ")


def test_a_journal_that_cannot_commit_is_critical_and_named() -> None:
    failure = {"reason": "disk full", "error": "database or disk is full", "since": 1, "held": 4}
    result = readiness(stats(journal_error=failure))
    assert not result.ready
    assert result.status is Status.CRITICAL
    assert result.failed == ["journal"]
    assert "disk full" in result.summary() and "4 events held" in result.summary()
    assert result.as_dict()["failed"] == ["journal"]


def test_no_journal_is_not_a_failure() -> None:
    assert readiness(stats(journal=None)).ready


def test_not_serving_is_critical() -> None:
    result = readiness(stats(), serving=False)
    assert result.failed == ["sockets"]


def test_returners_over_the_lag_limit_or_failing_are_critical_half_way_a_warning() -> None:
    result = readiness(
        stats(
            returners=[
                returner("ok", 10),
                returner("behind", 101),
                returner("slow", 60),
                returner("down", 1, "retrying"),
                returner("gone", 0, "stopped"),
            ]
        ),
        max_returner_lag=100,
    )
    by_name = {c.name: c.status for c in result.checks}
    assert by_name == {
        "sockets": Status.OK,
        "journal": Status.OK,
        "returner:ok": Status.OK,
        "returner:behind": Status.CRITICAL,
        "returner:slow": Status.WARNING,
        "returner:down": Status.CRITICAL,
        "returner:gone": Status.CRITICAL,
    }
    assert result.failed == ["returner:behind", "returner:down", "returner:gone"]


def test_a_warning_keeps_the_bus_ready() -> None:
    result = readiness(stats(returners=[returner("slow", 60)]), max_returner_lag=100)
    assert result.ready and result.status is Status.WARNING


def test_the_federation_link_counts_when_configured() -> None:
    linked = {"state": "linked", "connected": "nats://127.0.0.1:4222", "last_error": None}
    assert readiness(stats(cluster=linked)).ready
    down = {"state": "connecting", "connected": None, "last_error": "no servers available"}
    result = readiness(stats(cluster=down))
    assert result.failed == ["federation"]
    assert "no servers available" in result.summary()
    waiting = {**down, "waiting_for": "NATS to answer consumer info SALTBUS a"}
    assert "waiting for NATS to answer consumer info" in readiness(stats(cluster=waiting)).summary()


def test_unreachable_is_critical_or_unknown() -> None:
    assert unreachable("no socket").status is Status.CRITICAL
    assert unreachable("no answer", Status.UNKNOWN).status is Status.UNKNOWN
    assert not unreachable("no answer", Status.UNKNOWN).ready
