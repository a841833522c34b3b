"""Running a failed reaction again, as the reaction says (``retry:``)::

    restart_web:
      local.service.restart:
        - tgt: 'web*'
        - arg: [nginx]
      retry: {attempts: 5, delay: 2s, factor: 2, max_delay: 1m}

``attempts`` counts every run, the first one included (``retry: 5`` is short
for ``{attempts: 5}``); after run n fails the reactor waits ``delay`` times
``factor`` to the power n-1, at most ``max_delay``, and runs it again. Any
failed run is retried: a Salt master that cannot be reached, Salt reporting
a failure, a command's non-zero exit, http.post failing after its own
retries, a Python exception. Without ``retry:`` a reaction runs once.

Every run is an outcome event (``saltbus/reactor/<name>/ret``) carrying
``attempt`` and ``attempts``; a failed one says ``retrying_in`` (seconds) or,
the last, ``gave_up: true``. A retry waits on a timer, not in a worker, so
the other reactions go on meanwhile. While it waits its event counts as in
flight: the saved position stays before it, so after a crash catch-up runs it
again (and, under ``reactor_scope: leader``, a new leader does). A clean stop
does not wait for retries: each one pending gets an outcome event with
``gave_up: true`` and ``stopped: true`` naming the event's seq, which
``saltbus history --refire SEQ`` fires again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from saltbus.reactor.spec import Reaction

DEFAULT_DELAY: Final = 1.0
DEFAULT_FACTOR: Final = 2.0
DEFAULT_MAX_DELAY: Final = 60.0
RETRY_KEYS: Final = ("attempts", "delay", "factor", "max_delay")

Fail = Callable[[str], Exception]
Duration = Callable[[Any, Fail], float]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    delay: float = DEFAULT_DELAY
    factor: float = DEFAULT_FACTOR
    max_delay: float = DEFAULT_MAX_DELAY

    def wait_after(self, attempt: int) -> float:
        """Seconds between run ``attempt`` (1 is the first) and the next one."""
        return float(min(self.delay * self.factor ** (attempt - 1), self.max_delay))

    def describe(self) -> str:
        return (
            f"{self.attempts} attempts, waiting {self.delay:g} s x {self.factor:g} "
            f"(at most {self.max_delay:g} s) between them"
        )


def parse_retry(value: Any, fail: Fail, duration: Duration) -> RetryPolicy | None:
    """A reaction's ``retry:`` (a number of attempts, or a mapping of
    RETRY_KEYS); None for none. ``duration`` reads ``30s``, ``5m``... ."""
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"attempts": value}
    if not isinstance(value, Mapping):
        raise fail(
            f"retry must be a number of attempts or {{{', '.join(RETRY_KEYS)}}}, not {value!r}"
        )
    unknown = sorted(map(str, value.keys() - set(RETRY_KEYS)))
    if unknown:
        raise fail(f"retry: unknown key {', '.join(unknown)} (it takes {', '.join(RETRY_KEYS)})")
    attempts = value.get("attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise fail(f"retry: attempts must be 1 or more (the first run included), not {attempts!r}")

    def seconds(key: str, default: float) -> float:
        if value.get(key) is None:
            return default
        return duration(value[key], lambda message: fail(f"retry: {key}: {message}"))

    factor = value.get("factor", DEFAULT_FACTOR)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
        raise fail(f"retry: factor must be a number of 1 or more, not {factor!r}")
    delay = seconds("delay", DEFAULT_DELAY)
    max_delay = seconds("max_delay", max(DEFAULT_MAX_DELAY, delay))
    if max_delay < delay:
        raise fail(f"retry: max_delay ({max_delay:g} s) is shorter than delay ({delay:g} s)")
    return RetryPolicy(attempts, delay, float(factor), max_delay)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the outcome event of one run of a reaction with ``retry:`` adds."""

    number: int
    of: int
    retrying_in: float | None = None  # another run follows, after this many seconds
    gave_up: bool = False  # the last run failed
    stopped: bool = False  # ... or rather, the reactor stopped before the next
    ran: bool = True  # False: no run, the report of a retry cancelled by a stop

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"attempt": self.number, "attempts": self.of}
        if self.retrying_in is not None:
            data["retrying_in"] = round(self.retrying_in, 3)
        if self.gave_up:
            data["gave_up"] = True
        if self.stopped:
            data["stopped"] = True
        return data

    def describe(self) -> str:
        if self.retrying_in is not None:
            return f"attempt {self.number} of {self.of}; again in {self.retrying_in:g} s"
        if self.stopped:
            return f"attempt {self.number} of {self.of}; not retried: the reactor stops"
        return f"attempt {self.number} of {self.of}" + ("; gave up" if self.gave_up else "")


class Retryable(Protocol):
    @property
    def reaction(self) -> Reaction: ...

    @property
    def attempt(self) -> int: ...


J = TypeVar("J", bound=Retryable)


class Retries(Generic[J]):
    """The retries waiting for their time. ``again`` queues a job's next
    run (it may wait for room in the queue)."""

    def __init__(self, again: Callable[[J], Awaitable[None]]) -> None:
        self._again = again
        self._waiting: dict[asyncio.Task[None], tuple[J, float]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._waiting)

    def after(self, job: J, success: bool, *, schedule: bool = True) -> Attempt | None:
        """What the outcome of ``job``'s run says of its attempts (None: the
        reaction has no ``retry:``); a failed run with attempts left is
        queued again after its wait (unless ``schedule`` is false: the
        caller waits and runs it again itself)."""
        policy = job.reaction.retry
        if policy is None:
            return None
        if success or job.attempt >= policy.attempts:
            return Attempt(job.attempt, policy.attempts, gave_up=not success)
        if self._closed:
            return Attempt(job.attempt, policy.attempts, gave_up=True, stopped=True)
        wait = policy.wait_after(job.attempt)
        if not schedule:
            return Attempt(job.attempt, policy.attempts, retrying_in=wait)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._later(job, wait), name=f"retry-{job.reaction.name}")
        self._waiting[task] = (job, loop.time() + wait)
        return Attempt(job.attempt, policy.attempts, retrying_in=wait)

    async def _later(self, job: J, wait: float) -> None:
        await asyncio.sleep(wait)
        await self._again(job)
        # No await between the job entering the queue and this: close() never
        # reports as pending a job that is queued.
        self._waiting.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    def close(self) -> list[tuple[J, Attempt, str]]:
        """Stop retrying: the retries that were waiting are cancelled, each
        returned with what its outcome event says."""
        self._closed = True
        now = asyncio.get_running_loop().time()
        stopped = []
        for task, (job, due) in self._waiting.items():
            task.cancel()
            policy = job.reaction.retry
            assert policy is not None
            error = (
                f"not retried: the reactor stopped {max(0.0, due - now):.1f} s before attempt "
                f"{job.attempt + 1} of {policy.attempts} (`saltbus history --refire` with its "
                "trigger_seq fires the event again)"
            )
            attempt = Attempt(job.attempt, policy.attempts, gave_up=True, stopped=True, ran=False)
            stopped.append((job, attempt, error))
        self._waiting.clear()
        return stopped
