"""Listeners that fall behind: the publisher's side of the policy in
:class:`~saltbus.server.fanout.Subscriber`.

A Salt listener whose queue is over its bounds while it reads pauses the
firing side (the intake stops reading the pull connections) until it is back
under half; one that takes nothing for ``subscriber_stall_timeout`` is cut
loose. Drops are reported on the bus, at most once a second, as
``saltbus/subscriber/lagged`` events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from saltbus.config import Config
from saltbus.event import utc_stamp
from saltbus.server.fanout import Subscriber
from saltbus.server.intake import Intake
from saltbus.wire import pack_body

log = logging.getLogger("saltbus.server")

# A Salt listener that drops events is reported at most this often.
LAG_REPORT_INTERVAL: Final = 1.0
LAGGED_TAG: Final = "saltbus/subscriber/lagged"


class Laggards:
    def __init__(self, config: Config, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self._dropped_unreported: dict[Subscriber, int] = {}
        # Salt listeners whose queue is over its bounds: while there is one,
        # the pull connections are not read.
        self._backlogged: set[Subscriber] = set()
        self._lag_report: asyncio.TimerHandle | None = None
        self._lag_events_last_fired = 0

    def report_dropped(self, subscriber: Subscriber, count: int) -> None:
        """Count a Salt listener's dropped events; fire one lagged event a second."""
        self._dropped_unreported[subscriber] = self._dropped_unreported.get(subscriber, 0) + count
        if self._lag_report is None:
            loop = asyncio.get_running_loop()
            self._lag_report = loop.call_later(LAG_REPORT_INTERVAL, self._fire_lag_reports)

    def report_backlog(self, subscriber: Subscriber, backlogged: bool) -> None:
        """Slow the firing side while a Salt listener catches up."""
        if backlogged:
            self._backlogged.add(subscriber)
            self.intake.pause("subscribers")
            log.info("subscriber %s is behind; firing connections wait for it", subscriber.peer)
            return
        self._backlogged.discard(subscriber)
        if not self._backlogged:
            self.intake.resume("subscribers")

    def cut_loose_stuck(self, now: float) -> None:
        """Disconnect the backlogged listeners that took nothing for the stall timeout."""
        timeout = self.config.subscriber_stall_timeout
        for subscriber in list(self._backlogged):
            stalled = now - subscriber.last_progress
            if stalled > timeout:
                subscriber.cut_loose(stalled)

    def close(self) -> None:
        if self._lag_report is not None:
            self._lag_report.cancel()
            self._lag_report = None

    def _fire_lag_reports(self) -> None:
        self._lag_report = None
        reports, self._dropped_unreported = self._dropped_unreported, {}
        # The lagged events fired last time are events too: each may have pushed
        # one more event out of every stuck listener's full queue. Drops no more
        # than that are the reports' own echo; reporting them would fire one
        # event a second for as long as a listener stays stuck, with no traffic.
        echo = self._lag_events_last_fired
        stamp = utc_stamp(self.config.generation.stamp_has_offset)
        bodies = [
            pack_body(
                LAGGED_TAG,
                {"peer": sub.peer, "dropped": count, "total_dropped": sub.dropped, "_stamp": stamp},
            )
            for sub, count in reports.items()
            if count > echo
        ]
        self._lag_events_last_fired = len(bodies)
        if bodies:
            self.intake.accept(bodies, [LAGGED_TAG] * len(bodies))
