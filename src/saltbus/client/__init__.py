"""Clients of a bus: blocking (:class:`Listener`, :class:`Sender`), asyncio
(:class:`AsyncClient`), and Salt's API (:class:`MasterEvent`, ...)."""

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
