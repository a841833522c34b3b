"""The bus's metrics, read from the publisher's statistics at scrape time.

A custom collector: nothing is counted twice and nothing is added to the
path events take; each scrape turns one ``Server.stats()`` (or the same
statistics asked over the bus) into metric families. Only the journal's
commit times, which the statistics do not keep, are a histogram observed as
commits happen (:func:`commit_histogram`).

Label sets stay bounded: per returner and per reaction (names from the
configuration), per refusal reason; never per tag, seq or connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

StatsSource = Callable[[], Mapping[str, Any]]

# SQLite commits take from tens of microseconds (no sync) to tens of
# milliseconds (fsync on a busy disk).
COMMIT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


def commit_histogram(registry: CollectorRegistry) -> Histogram:
    """``saltbus_journal_commit_seconds``, for ``Server.commit_observer``."""
    return Histogram(
        "saltbus_journal_commit_seconds",
        "Time each journal append transaction took to commit",
        buckets=COMMIT_BUCKETS,
        registry=registry,
    )


class BusCollector(Collector):
    """Metric families from a publisher's statistics, read when scraped."""

    def __init__(self, stats: StatsSource) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        # Families vary with the configuration (returners, federation): no
        # fixed description, so registering does not call collect().
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield from _bus(stats)
        yield from _journal(stats)
        yield from _returners(stats.get("returners") or [])
        if stats.get("cluster"):
            yield from _federation(stats["cluster"])
        if stats.get("reactor"):
            yield from _reactor(stats["reactor"])


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _bus(stats: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "saltbus_info", "The bus this publisher serves", labels=["node", "salt_version"]
    )
    info.add_metric([str(stats.get("node")), str(stats.get("salt_version"))], 1)
    yield info
    yield _counter(
        "saltbus_events_received", "Events received on the pull socket", stats["received"]
    )
    yield _counter(
        "saltbus_events_delivered",
        "Events written to subscribers (one per subscriber that took it)",
        stats.get("delivered", 0),
    )
    refused = CounterMetricFamily(
        "saltbus_events_refused",
        "Events refused, by reason: journal_unavailable (acked fires), too_large, malformed",
        labels=["reason"],
    )
    reasons = stats.get("refused") or {"journal_unavailable": stats.get("journal_refused", 0)}
    for reason in ("journal_unavailable", "too_large", "malformed"):
        refused.add_metric([reason], reasons.get(reason, 0))
    yield refused
    subscribers = stats.get("subscribers") or []
    yield _gauge("saltbus_subscribers", "Subscribers connected now", len(subscribers))
    yield _gauge(
        "saltbus_subscriber_queue_events",
        "Events waiting in subscribers' queues now, over all subscribers",
        sum(s.get("queued_events", 0) for s in subscribers),
    )
    yield _gauge(
        "saltbus_subscriber_queue_bytes",
        "Bytes waiting in subscribers' queues now, over all subscribers",
        sum(s.get("queued_bytes", 0) for s in subscribers),
    )
    yield _counter(
        "saltbus_subscriber_dropped",
        "Events dropped from Salt subscribers' full queues",
        stats.get("dropped", 0),
    )
    yield _counter(
        "saltbus_subscriber_lagged",
        "saltbus subscribers disconnected for falling behind (they resume from the journal)",
        stats.get("lagged", 0),
    )
    yield _gauge(
        "saltbus_pull_connections", "Firing connections open now", stats.get("pull_connections", 0)
    )
    yield _gauge("saltbus_uptime_seconds", "Seconds since the publisher started", stats["uptime"])
    yield _counter(
        "saltbus_busy_poll_seconds",
        "Seconds the publisher's loop spent polling after activity instead of sleeping "
        "(busy_poll_us)",
        stats.get("busy_poll_seconds", 0.0),
    )


def _journal(stats: Mapping[str, Any]) -> Iterator[Metric]:
    journal = stats.get("journal")
    if not journal:
        return
    yield _gauge("saltbus_journal_last_seq", "The last seq given to an event", stats["last_seq"])
    yield _gauge(
        "saltbus_journal_bytes",
        "Size of the journal's files (database and write-ahead log)",
        journal_bytes(Path(journal)),
    )
    yield _counter(
        "saltbus_journal_failures",
        "Journal commits that failed",
        stats.get("journal_failures", 0),
    )
    failure = stats.get("journal_error")
    yield _gauge(
        "saltbus_journal_up", "1 while the journal commits, 0 while it cannot", 0 if failure else 1
    )
    yield _gauge(
        "saltbus_journal_held_events",
        "Events held while the journal cannot commit",
        failure.get("held", 0) if failure else 0,
    )
    yield _gauge(
        "saltbus_journal_in_flight_events",
        "Events handed to the journal and not yet committed",
        stats.get("journal_in_flight", 0),
    )


def journal_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            continue  # no write-ahead log right after a checkpoint, or not readable here
    return total


def _returners(returners: list[Mapping[str, Any]]) -> Iterator[Metric]:
    if not returners:
        return
    lag = GaugeMetricFamily(
        "saltbus_returner_lag_events",
        "Events journaled and not yet returned, per returner",
        labels=["returner"],
    )
    returned = CounterMetricFamily(
        "saltbus_returner_returned_events", "Events returned, per returner", labels=["returner"]
    )
    failures = CounterMetricFamily(
        "saltbus_returner_failures", "Failed returner calls, per returner", labels=["returner"]
    )
    up = GaugeMetricFamily(
        "saltbus_returner_up",
        "1 while a returner's last call succeeded, 0 while it is retrying or stopped",
        labels=["returner"],
    )
    # Each sink's own counters (rotations, dead-lettered batches, ...): the
    # names come from the sinks' code, so the label set stays bounded.
    own = CounterMetricFamily(
        "saltbus_returner_sink",
        "A sink's own counters, per returner (rotations, dead_lettered, ...)",
        labels=["returner", "counter"],
    )
    for returner in returners:
        name = [str(returner["name"])]
        lag.add_metric(name, returner.get("lag", 0))
        returned.add_metric(name, returner.get("returned", 0))
        failures.add_metric(name, returner.get("failures", 0))
        up.add_metric(name, 1 if returner.get("state") == "running" else 0)
        for counter, value in _counters(returner.get("details")):
            own.add_metric([*name, counter], value)
    yield from (lag, returned, failures, up, own)


def _counters(details: Any) -> Iterator[tuple[str, int]]:
    """The integer counters of a sink's own statistics (not its paths, not flags)."""
    if not isinstance(details, Mapping):
        return
    for key, value in sorted(details.items()):
        if isinstance(value, int) and not isinstance(value, bool):
            yield str(key), value


def _federation(cluster: Mapping[str, Any]) -> Iterator[Metric]:
    export = cluster.get("export") or {}
    imported = cluster.get("import") or {}
    yield _gauge(
        "saltbus_federation_up",
        "1 while linked to a NATS server",
        1 if cluster.get("state") == "linked" else 0,
    )
    if export.get("lag") is not None:
        yield _gauge(
            "saltbus_federation_export_lag_events",
            "Journaled events not yet exported to the federation",
            export["lag"],
        )
    yield _counter(
        "saltbus_federation_exported_events", "Events exported", export.get("exported", 0)
    )
    yield _counter(
        "saltbus_federation_export_failures", "Failed exports", export.get("failures", 0)
    )
    yield _counter(
        "saltbus_federation_imported_events",
        "Events imported from other nodes",
        imported.get("imported", 0),
    )
    yield _counter(
        "saltbus_federation_duplicates_dropped",
        "Imported events dropped as duplicates",
        imported.get("duplicates", 0),
    )


def _reactor(reactor: Mapping[str, Any]) -> Iterator[Metric]:
    reactions = CounterMetricFamily(
        "saltbus_reactor_reactions",
        "Reactions by reaction name and outcome",
        labels=["reaction", "outcome"],
    )
    outcomes: dict[tuple[str, str], int] = {}
    for name, counts in (reactor.get("outcomes") or {}).items():
        for outcome, count in counts.items():
            outcomes[(name, outcome)] = count
    for key, skipped in (("skipped_by_when", "skipped_when"), ("skipped_by_throttle", "throttled")):
        for name, count in (reactor.get(key) or {}).items():
            outcomes[(name, skipped)] = count
    for (name, outcome), count in sorted(outcomes.items()):
        reactions.add_metric([name, outcome], count)
    yield reactions
    yield _counter(
        "saltbus_reactor_events", "Events the reactor looked at", reactor.get("events", 0)
    )
    yield _gauge(
        "saltbus_reactor_queue_events",
        "Reactions waiting for a worker now",
        reactor.get("queue_depth", 0),
    )
    yield _counter(
        "saltbus_reactor_dropped",
        "Reactions dropped because the reactor's queue was full",
        reactor.get("dropped", 0),
    )
    yield _counter(
        "saltbus_reactor_stopped",
        "Reactions stopped by the loop guard",
        reactor.get("stopped", 0),
    )
    yield _gauge(
        "saltbus_reactor_gated_events",
        "Reactions waiting for their lock or concurrency limit now",
        reactor.get("gated_waiting", 0),
    )
    if "missing_returns_open_jobs" in reactor:  # reactor_missing_returns is on
        yield _gauge(
            "saltbus_reactor_missing_returns_open_jobs",
            "Salt jobs whose minions have not all returned yet",
            reactor["missing_returns_open_jobs"],
        )
        yield _counter(
            "saltbus_reactor_missing_returns_reported",
            "Salt jobs reported with minions that did not return in time",
            reactor.get("missing_returns_reported", 0),
        )
        yield _counter(
            "saltbus_reactor_missing_returns_dropped",
            "Salt jobs forgotten: more than reactor_missing_returns_max_jobs were open",
            reactor.get("missing_returns_dropped", 0),
        )
