"""The one way a test waits for something another thread or process does.

A wait that times out fails the test, naming what it waited for: a wait that
only returns a bool can be ignored, and then it never fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

WAIT = 10.0  # seconds: the default bound of a wait
STEP = 0.02  # seconds between two looks; cheap predicates, so short
ASYNC_STEP = 0.005  # in an event loop a look costs a turn of the loop, no thread switch

# What was waited for: a description, or a function giving one when the wait
# fails (to say what was seen instead, e.g. which descriptors are still open).
What = str | Callable[[], str]
T = TypeVar("T")


def _timed_out(what: What, timeout: float) -> AssertionError:
    described = what if isinstance(what, str) else what()
    return AssertionError(f"timed out after {timeout} s waiting for {described}")


def wait_until(
    predicate: Callable[[], T], what: What, timeout: float = WAIT, step: float = STEP
) -> T:
    """Return ``predicate()``'s first true value (a regex match, say); raise
    AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        time.sleep(step)
    return result


async def wait_until_async(
    predicate: Callable[[], object], what: What, timeout: float = WAIT, step: float = ASYNC_STEP
) -> None:
    """:func:`wait_until` inside an event loop: the loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(step)
