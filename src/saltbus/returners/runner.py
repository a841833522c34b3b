"""The configured returners, each fed from the journal by its own thread.

Unlike Salt's EventReturn process, which hands live events to the returners
and drops a batch when a returner raises, saltbus's returners read the
journal: each keeps its own position (so a failing database delays only its
own returner), and a failed batch is retried, with backoff, from there.

The publisher calls :meth:`ReturnerRunner.notify` after each commit, so the
returners pick new events up at once; a short poll is only a fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.returners.filters import TagFilter
from saltbus.returners.options import Option, accepted, options_of
from saltbus.returners.plugins import (
    ReturnerFactory,
    close_returner,
    find_returner,
    make_returner,
)
from saltbus.returners.redact import redactor_for
from saltbus.returners.worker import Batching, ReturnerWorker

log = logging.getLogger("saltbus.returners")

CLOSE_TIMEOUT: Final = 10.0
RETRY_INITIAL: Final = 0.5


class ReturnerRunner:
    """``config.event_return``'s returners, fed from the journal at ``journal_path``.

    ``factories`` (name → factory) take precedence over built-ins and entry
    points (for tests and for programs that embed the bus). ``start()`` makes
    the returners and starts their threads; ``close()`` stops them. Also a
    context manager.
    """

    def __init__(
        self,
        config: Config,
        journal_path: Path,
        *,
        factories: Mapping[str, ReturnerFactory] | None = None,
        retry_initial: float = RETRY_INITIAL,
        poll_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.journal_path = journal_path
        self._factories = factories
        self._filter = TagFilter(config.event_return_whitelist, config.event_return_blacklist)
        self._batching = Batching(
            queue=config.event_return_queue,
            max_seconds=config.event_return_queue_max_seconds,
            retry_initial=min(retry_initial, config.event_return_retry_max_seconds),
            retry_max=config.event_return_retry_max_seconds,
            poll_interval=poll_interval,
        )
        self._redactor = redactor_for(config.redact)
        self.workers: list[ReturnerWorker] = []
        self._started = False

    def options_for(self, name: str, declared: Sequence[Option] | None = None) -> dict[str, Any]:
        """What the returner ``name``'s factory is given: its returner_options,
        with ``master_id`` defaulting to the bus's id when it has one (and the
        returner takes it: ``declared`` options with a master_id, or none
        declared)."""
        options = dict(self.config.returner_options.get(name, {}))
        takes_id = declared is None or "master_id" in accepted(declared)
        if self.config.id is not None and takes_id:
            options.setdefault("master_id", self.config.id)
        return options

    def start(self) -> None:
        """Make every returner (ConfigError when one cannot be), then start
        their threads (JournalError when the journal cannot be read)."""
        if self._started:
            raise ConfigError("the returner runner was already started")
        self._started = True
        unknown = set(self.config.returner_options) - set(self.config.event_return)
        if unknown:
            log.debug("returner_options for returners not in event_return: %s", sorted(unknown))
        returners = []
        try:
            for name in self.config.event_return:
                target = find_returner(name, self._factories)
                options = self.options_for(name, options_of(target))
                returners.append(make_returner(name, target, options))
        except BaseException:
            for made in returners:
                _close_quietly(made)
            raise
        for name, returner in zip(self.config.event_return, returners, strict=True):
            worker = ReturnerWorker(
                name,
                returner,
                self.journal_path,
                tag_filter=self._filter,
                batching=self._batching,
                redactor=self._redactor,
            )
            try:
                worker.start()
            except BaseException:
                self.close()
                for made in returners[len(self.workers) + 1 :]:
                    _close_quietly(made)
                raise
            self.workers.append(worker)
        if self.workers:
            log.debug("returners started: %s", ", ".join(self.config.event_return))

    def notify(self, last_seq: int) -> None:
        """Events up to ``last_seq`` were committed to the journal."""
        for worker in self.workers:
            worker.notify(last_seq)

    def reopen(self) -> None:
        """Every returner with a ``reopen()`` (rawfile_json) reopens its file
        before its next batch: what `saltbus serve` does on SIGHUP."""
        for worker in self.workers:
            worker.reopen()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop every returner: each makes one last attempt at the events it
        has gathered; anything not returned stays after its cursor, for the
        next start. Waits at most ``timeout`` seconds in all."""
        for worker in self.workers:
            worker.close(0)  # ask them all first: they stop in parallel
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if not worker.close(max(0.0, deadline - time.monotonic())):
                log.error("returner %r did not stop within %s s", worker.name, timeout)

    def stats(self) -> list[dict[str, Any]]:
        return [worker.stats() for worker in self.workers]

    def __enter__(self) -> ReturnerRunner:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _close_quietly(returner: Any) -> None:
    try:
        close_returner(returner)
    except Exception:
        log.exception("closing a returner failed")
