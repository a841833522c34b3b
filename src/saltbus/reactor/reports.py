"""The events the reactor fires about itself, and their data.

- ``saltbus/reactor/<reaction>/ret``: one per reaction run, ``{success,
  result | error, duration, trigger_tag, trigger_seq, reaction, action, file}``
  (a failed command has both its result and an error), and ``jid`` for a
  Salt job (local, runner, wheel); for a reaction with ``retry:``,
  ``attempt``, ``attempts`` and ``retrying_in`` or ``gave_up`` (:mod:`.retry`).
- ``saltbus/reactor/loop``: a chain of reactions reached ``reactor_max_depth``.
- ``saltbus/reactor/overflow``: reactions dropped because the queue was full
  (at most one event a second, with counts).
- ``saltbus/reactor/error``: a reaction file failed to render for an event.
- ``saltbus/reactor/reload``: the outcome of a reload.

ret, loop and error events record their cause, so they count in the loop
guard; a loop event is always past the limit, so it cannot start reactions
(watch it with ``saltbus listen`` or a returner instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from saltbus.reactor.actions import Outcome, Trigger
from saltbus.reactor.causes import Cause, with_cause
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.retry import Attempt
from saltbus.reactor.spec import Reaction

PREFIX: Final = "saltbus/reactor/"
LOOP_TAG: Final = PREFIX + "loop"
OVERFLOW_TAG: Final = PREFIX + "overflow"
ERROR_TAG: Final = PREFIX + "error"
RELOAD_TAG: Final = PREFIX + "reload"


@dataclass
class Stats:
    """What a reactor did since it started: logged when it stops, and shown
    by ``saltbus stats`` when the reactor runs inside ``saltbus serve``."""

    events: int = 0
    matched: int = 0
    queued: int = 0
    succeeded: int = 0
    failed: int = 0
    filtered: int = 0  # `when` was false
    throttled: int = 0
    stopped: int = 0  # by the loop guard
    dropped: int = 0  # queue full
    render_errors: int = 0
    internal_errors: int = 0  # an event the reactor itself failed on (a bug; logged)
    other_nodes: int = 0  # imported events not reacted to (reactor_scope local)
    retried: int = 0  # failed runs to be run again (retry:)
    gave_up: int = 0  # reactions whose last attempt failed
    retries_stopped: int = 0  # retries still waiting when the reactor stopped
    reloads: int = 0
    # Per reaction name: a reaction that never runs should say why.
    skipped_by_when: dict[str, int] = field(default_factory=dict)
    skipped_by_throttle: dict[str, int] = field(default_factory=dict)
    # Per reaction name, its runs by outcome ("succeeded", "failed").
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def finished(self, reaction: Reaction, success: bool, attempt: Attempt | None = None) -> None:
        if attempt is not None:
            self.retries_stopped += attempt.stopped
            if not attempt.ran:
                return  # the failed run before it was counted already
            self.retried += attempt.retrying_in is not None
            self.gave_up += attempt.gave_up
        outcome = "succeeded" if success else "failed"
        if success:
            self.succeeded += 1
        else:
            self.failed += 1
        counts = self.outcomes.setdefault(reaction.name, {})
        counts[outcome] = counts.get(outcome, 0) + 1

    def skipped_when(self, reaction: Reaction) -> None:
        self.filtered += 1
        self.skipped_by_when[reaction.name] = self.skipped_by_when.get(reaction.name, 0) + 1

    def skipped_throttle(self, reaction: Reaction) -> None:
        self.throttled += 1
        counts = self.skipped_by_throttle
        counts[reaction.name] = counts.get(reaction.name, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """A copy, as plain JSON-ready values (the counts go on changing)."""
        return asdict(self)

    def __str__(self) -> str:
        values = [(f.name, getattr(self, f.name)) for f in fields(self)]
        totals = ", ".join(f"{name} {value}" for name, value in values if isinstance(value, int))
        return totals + "".join(
            f"; {what}: {_counts(counts)}"
            for what, counts in (
                ("skipped by when", self.skipped_by_when),
                ("skipped by once_within", self.skipped_by_throttle),
            )
            if counts
        )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def ret_tag(reaction: Reaction) -> str:
    return f"{PREFIX}{reaction.name}/ret"


def ret_data(
    reaction: Reaction,
    trigger: Trigger,
    outcome: Outcome,
    duration: float,
    node: str | None = None,
    attempt: Attempt | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"success": outcome.success}
    if isinstance(outcome.result, Mapping) and outcome.result.get("jid"):
        data["jid"] = outcome.result["jid"]  # Salt's job: follow salt/job/<jid>/ret/*
    if outcome.result is not None or outcome.success:
        data["result"] = outcome.result
    if not outcome.success:
        data["error"] = outcome.error or "failed"
    data.update(
        duration=round(duration, 6),
        trigger_tag=trigger.tag,
        trigger_seq=trigger.seq,
        reaction=reaction.name,
        action=reaction.function,
        file=reaction.where,
    )
    if node is not None:
        data["node"] = node  # with federation: which node's reactor ran it
    if attempt is not None:
        data.update(attempt.as_data())
    return with_cause(data, trigger.cause.then(reaction.name, trigger.tag, trigger.seq))


def without_result(data: Mapping[str, Any], why: str) -> dict[str, Any]:
    """A ret whose result could not be sent (over max_event_size)."""
    out = {k: v for k, v in data.items() if k != "result"}
    out["success"] = False
    out["error"] = why if not data.get("error") else f"{data['error']}; {why}"
    return out


def loop_data(trigger: Trigger, stopped: list[str], max_depth: int) -> dict[str, Any]:
    data = {
        "trigger_tag": trigger.tag,
        "trigger_seq": trigger.seq,
        "depth": trigger.cause.depth,
        "max_depth": max_depth,
        "reactions": stopped,
        "chain": [dict(link) for link in trigger.cause.chain],
    }
    # Past the limit: no reaction runs for a loop event, so it cannot loop.
    return with_cause(data, Cause(max(trigger.cause.depth, max_depth) + 1, trigger.cause.chain))


def error_data(trigger: Trigger, exc: ReactionFileError) -> dict[str, Any]:
    data = {
        "error": str(exc),
        "file": str(exc.path),
        "line": exc.line,
        "trigger_tag": trigger.tag,
        "trigger_seq": trigger.seq,
    }
    return with_cause(data, trigger.cause.then("<render>", trigger.tag, trigger.seq))


def overflow_data(drops: Mapping[str, int], total: int, hwm: int, queued: int) -> dict[str, Any]:
    return {
        "dropped": sum(drops.values()),
        "total_dropped": total,
        "reactions": dict(drops),
        "reactor_worker_hwm": hwm,
        "queued": queued,
    }
