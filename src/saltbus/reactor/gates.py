"""The gates a reaction passes for one event before it is queued: its
``when:`` and ``once_within`` (per ``group_by`` group). A skip is counted
per reaction and logged at debug; a ``when:`` that fails is the reaction's
failure (reported through ``failed``, as a ret event)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from saltbus.reactor.actions import Outcome, Trigger
from saltbus.reactor.reports import Stats
from saltbus.reactor.spec import Reaction
from saltbus.reactor.templates import compile_condition
from saltbus.reactor.throttle import Throttle, group_values

log = logging.getLogger("saltbus.reactor")

Failed = Callable[[Reaction, Trigger, Outcome], None]


class Gates:
    def __init__(self, stats: Stats, failed: Failed) -> None:
        self.stats = stats
        self._failed = failed
        self._throttle = Throttle()

    def when(self, reaction: Reaction, trigger: Trigger) -> bool:
        """Whether the reaction's ``when:`` holds for the event."""
        assert reaction.when is not None
        try:
            if compile_condition(reaction.when)(trigger.tag, trigger.data):
                return True
        except Exception as exc:
            error = f"when: {reaction.when!r} failed: {type(exc).__name__}: {exc}"
            self._failed(reaction, trigger, Outcome(False, None, error))
            return False
        self.stats.skipped_when(reaction)
        log.debug(
            "%s (%s) skipped for %s (seq %s): when: %s is false",
            reaction.name,
            reaction.where,
            trigger.tag,
            trigger.seq,
            reaction.when,
            extra=_about(trigger),
        )
        return False

    def allowed(self, reaction: Reaction, trigger: Trigger) -> bool:
        """once_within: whether the reaction's window (for its group) is open."""
        assert reaction.once_within is not None
        group = group_values(trigger.data, reaction.group_by)
        if self._throttle.allow((reaction.path, reaction.name, group), reaction.once_within):
            return True
        self.stats.skipped_throttle(reaction)
        if log.isEnabledFor(logging.DEBUG):
            pairs = zip(reaction.group_by, group, strict=True)
            log.debug(
                "%s (%s) skipped for %s (seq %s): it ran within the last %g s (once_within)%s",
                reaction.name,
                reaction.where,
                trigger.tag,
                trigger.seq,
                reaction.once_within,
                f" for {', '.join(f'{k}={v}' for k, v in pairs)}" if reaction.group_by else "",
                extra=_about(trigger),
            )
        return False


def _about(trigger: Trigger) -> dict[str, object]:
    return {"tag": trigger.tag, "seq": trigger.seq}
