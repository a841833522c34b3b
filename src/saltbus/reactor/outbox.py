"""What the reactor fires: its reports, and the events its reactions send.

Every reaction's outcome is logged and fired as ``saltbus/reactor/<name>/ret``;
the loop guard's, the queue's and a reload's reports go the same way
(:mod:`.reports` shapes their data). A report is fired from a task of its
own, so a slow bus never holds a worker, and a failure to fire one is only
logged; an ``event.send`` action fires through :meth:`Outbox.fire_strict`,
where a failure is the action's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, Final

from saltbus.client.aio import AsyncClient
from saltbus.errors import FrameTooLargeError, SaltbusError
from saltbus.reactor import reports
from saltbus.reactor.actions import Outcome, Trigger
from saltbus.reactor.errors import ActionError
from saltbus.reactor.reports import Stats
from saltbus.reactor.retry import Attempt
from saltbus.reactor.spec import Reaction

# The engine's logger: one name for everything the reactor logs.
log = logging.getLogger("saltbus.reactor")

FIRE_TIMEOUT: Final = 5.0


class Outbox:
    """Fires through ``client`` (None until the reactor is connected: reports
    before that are dropped) and counts outcomes in ``stats``; ``node`` names
    the node in ret events (with federation)."""

    def __init__(self, stats: Stats, node: str | None) -> None:
        self.client: AsyncClient | None = None
        self._stats = stats
        self._node = node
        self._background: set[asyncio.Task[None]] = set()

    def finished(
        self,
        reaction: Reaction,
        trigger: Trigger,
        outcome: Outcome,
        duration: float,
        attempt: Attempt | None = None,
    ) -> None:
        self._stats.finished(reaction, outcome.success, attempt)
        if outcome.success:
            log.debug(
                "%s on %s: ok in %.3f s",
                reaction.name,
                trigger.tag,
                duration,
                extra=about(trigger.tag, trigger.seq),
            )
        else:
            log.warning(
                "reaction %s (%s) on %s failed: %s%s",
                reaction.name,
                reaction.where,
                trigger.tag,
                outcome.error,
                f" ({attempt.describe()})" if attempt else "",
                extra=about(trigger.tag, trigger.seq),
            )
        data = reports.ret_data(reaction, trigger, outcome, duration, self._node, attempt)
        self.report(reports.ret_tag(reaction), data)

    def loop_stopped(self, trigger: Trigger, stopped: list[str], max_depth: int) -> None:
        self._stats.stopped += len(stopped)
        if trigger.tag == reports.LOOP_TAG:
            return
        log.warning(
            "loop guard: %s not run for %s (seq %s): the chain is %d reactions deep "
            "(reactor_max_depth %d)",
            ", ".join(stopped),
            trigger.tag,
            trigger.seq,
            trigger.cause.depth,
            max_depth,
            extra=about(trigger.tag, trigger.seq),
        )
        self.report(reports.LOOP_TAG, reports.loop_data(trigger, stopped, max_depth))

    async def fire_strict(self, tag: str, data: Any) -> None:
        """For event.send: a failure to fire is the action's failure."""
        assert self.client is not None
        try:
            await self.client.fire(tag, data, FIRE_TIMEOUT)
        except SaltbusError as exc:
            raise ActionError(f"cannot fire {tag}: {exc}") from None

    async def publish(self, tag: str, data: dict[str, Any]) -> None:
        """For the reactor's own reports: a failure is logged."""
        if self.client is None:
            return
        try:
            await self.client.fire(tag, data, FIRE_TIMEOUT)
        except FrameTooLargeError as exc:
            with contextlib.suppress(SaltbusError):
                await self.client.fire(tag, reports.without_result(data, str(exc)), FIRE_TIMEOUT)
        except SaltbusError as exc:
            log.warning("could not fire %s: %s", tag, exc)

    def report(self, tag: str, data: dict[str, Any]) -> None:
        """Publish without waiting (from code that must not wait)."""
        self.spawn(self.publish(tag, data))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run it in the background; :meth:`drain` waits for it."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Give what is still being fired up to FIRE_TIMEOUT to finish."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=FIRE_TIMEOUT)


def about(tag: str, seq: int | None) -> dict[str, object]:
    """A log record's event (the JSON log lines carry it: saltbus.cli.logs)."""
    return {"tag": tag, "seq": seq}
