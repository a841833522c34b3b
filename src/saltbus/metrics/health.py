"""Readiness, judged from a publisher's statistics (``Server.stats()``).

Pure functions of the statistics, so that ``/readyz`` in the daemon, the HTTP
bridge's ``/readyz`` (statistics asked over the bus) and ``saltbus health``
(Nagios-style exit codes) give one answer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class Status(enum.IntEnum):
    """Nagios's plugin exit codes, worst last."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.name.lower(), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        """The worst check's (UNKNOWN counts as worse than CRITICAL only when
        nothing is CRITICAL: a known failure says more)."""
        statuses = {check.status for check in self.checks}
        for status in (Status.CRITICAL, Status.UNKNOWN, Status.WARNING):
            if status in statuses:
                return status
        return Status.OK

    @property
    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200: warnings do not take readiness away."""
        return self.status in (Status.OK, Status.WARNING)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status not in (Status.OK, Status.WARNING)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "status": self.status.name.lower(),
            "failed": self.failed,
            "checks": [check.as_dict() for check in self.checks],
        }

    def summary(self) -> str:
        """One line, as a Nagios plugin prints it."""
        shown = [c for c in self.checks if c.status is not Status.OK] or list(self.checks)
        return f"SALTBUS {self.status.name} - " + "; ".join(f"{c.name}: {c.detail}" for c in shown)


def unreachable(detail: str, status: Status = Status.CRITICAL) -> Readiness:
    """No statistics: the publisher does not answer (``detail`` says why)."""
    return Readiness((Check("sockets", status, detail),))


def readiness(
    stats: Mapping[str, Any], *, serving: bool = True, max_returner_lag: int = 10_000
) -> Readiness:
    """Judge a publisher from its statistics. ``serving`` is False once it has
    stopped serving (or before its sockets are bound)."""
    checks = [
        Check(
            "sockets",
            Status.OK if serving else Status.CRITICAL,
            "bound" if serving else "the publisher is not serving",
        ),
        _journal(stats),
        *_returners(stats.get("returners") or [], max_returner_lag),
    ]
    cluster = stats.get("cluster")
    if cluster:
        checks.append(_federation(cluster))
    return Readiness(tuple(checks))


def _journal(stats: Mapping[str, Any]) -> Check:
    if not stats.get("journal"):
        return Check("journal", Status.OK, "off")
    failure = stats.get("journal_error")
    if failure:
        return Check(
            "journal",
            Status.CRITICAL,
            f"cannot commit ({failure.get('reason')}): {failure.get('error')}; "
            f"{failure.get('held', 0)} events held",
        )
    return Check("journal", Status.OK, "commits")


def _returners(returners: Sequence[Mapping[str, Any]], max_lag: int) -> list[Check]:
    checks = []
    for returner in returners:
        name = f"returner:{returner.get('name')}"
        lag = int(returner.get("lag") or 0)
        state = returner.get("state")
        error = returner.get("last_error")
        if state == "stopped":
            checks.append(Check(name, Status.CRITICAL, f"stopped, {lag} events behind"))
        elif state == "retrying":
            # Its destination fails now (a database down): what it is to
            # return waits, and the lag only grows until it comes back.
            checks.append(Check(name, Status.CRITICAL, f"failing, {lag} events behind: {error}"))
        elif lag > max_lag:
            checks.append(Check(name, Status.CRITICAL, f"{lag} events behind (over {max_lag})"))
        elif lag > max_lag // 2:
            checks.append(Check(name, Status.WARNING, f"{lag} events behind (limit {max_lag})"))
        else:
            checks.append(Check(name, Status.OK, f"{lag} events behind"))
    return checks


def _federation(cluster: Mapping[str, Any]) -> Check:
    if cluster.get("state") == "linked":
        return Check("federation", Status.OK, f"linked to {cluster.get('connected')}")
    error = cluster.get("last_error") or "no server reached yet"
    waiting = cluster.get("waiting_for")
    detail = f"{error}; waiting for {waiting}" if waiting else error
    return Check("federation", Status.CRITICAL, f"not linked: {detail}")
