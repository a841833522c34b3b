"""Stopping tasks for sure.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives just
as what it waits for completes (the clients wait that way, e.g. for the
publisher's subscription answer): the task goes on as if never cancelled. So a
task is cancelled again until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

RECANCEL_EVERY: Final = 0.1


async def stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each is done; their errors are not raised."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in tasks:
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()  # retrieved: no "exception never retrieved" warning
