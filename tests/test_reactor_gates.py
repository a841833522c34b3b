"""The single-event gates (saltbus.reactor.gates): when: true, false or
failing, and once_within per group_by group; each skip counted per reaction."""

from __future__ import annotations

from pathlib import Path

from saltbus.reactor.actions import Outcome, Trigger
from saltbus.reactor.causes import Cause
from saltbus.reactor.gates import Gates
from saltbus.reactor.reports import Stats
from saltbus.reactor.spec import Reaction


def trigger(**data: object) -> Trigger:
    return Trigger("t", data, 1, Cause())


def test_when_runs_skips_or_fails() -> None:
    failures: list[tuple[str, Outcome]] = []
    stats = Stats()
    gates = Gates(stats, lambda r, t, o: failures.append((r.name, o)))
    reaction = Reaction("r", Path("f.sls"), 1, "event.send", when="data['n'] > 1")
    assert gates.when(reaction, trigger(n=2))
    assert not gates.when(reaction, trigger(n=1))
    assert stats.skipped_by_when == {"r": 1}
    assert not gates.when(reaction, trigger())  # a missing key: the reaction fails
    assert [(name, o.success) for name, o in failures] == [("r", False)]
    assert "when: \"data['n'] > 1\" failed" in str(failures[0][1].error)


def test_once_within_per_group() -> None:
    stats = Stats()
    gates = Gates(stats, lambda r, t, o: None)
    reaction = Reaction("r", Path("f.sls"), 1, "event.send", once_within=60.0, group_by=("host",))
    runs = [gates.allowed(reaction, trigger(host=h)) for h in ("a", "b", "a", "b", "c")]
    assert runs == [True, True, False, False, True]
    assert stats.skipped_by_throttle == {"r": 2}
