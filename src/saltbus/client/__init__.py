"""Clients of a bus: blocking (:class:`Listener`, :class:`Sender`), asyncio
(:class:`AsyncClient`), and Salt's API (:class:`MasterEvent`, ...).

The names are imported from their modules on first use (see
:mod:`saltbus.lazy`): a blocking client (``saltbus fire``) does not load asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saltbus.lazy import lazy_names

if TYPE_CHECKING:
    from saltbus.client.aio import AsyncClient, Subscription
    from saltbus.client.listener import Listener
    from saltbus.client.saltstyle import MasterEvent, MinionEvent, SaltEvent, get_event
    from saltbus.client.sender import Sender

__all__ = [
    "AsyncClient",
    "Listener",
    "MasterEvent",
    "MinionEvent",
    "SaltEvent",
    "Sender",
    "Subscription",
    "get_event",
]

# Hidden from type checkers, which see the imports above (see saltbus.lazy).
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "saltbus.client.aio": ("AsyncClient", "Subscription"),
            "saltbus.client.listener": ("Listener",),
            "saltbus.client.saltstyle": ("MasterEvent", "MinionEvent", "SaltEvent", "get_event"),
            "saltbus.client.sender": ("Sender",),
        },
    )
