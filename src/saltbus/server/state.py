"""What the connection protocols share with the server, and nothing more.

As uvicorn's ``ServerState``: the protocols get this small object when they
are made, not the :class:`~saltbus.server.app.Server`, so they depend on what
they use (the intake, the fan-out, the access policy and four callbacks) and
the server module does not import them back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from saltbus.config import Config
from saltbus.control import Subscribe
from saltbus.server.access import AccessPolicy
from saltbus.server.commits import AckTarget
from saltbus.server.fanout import FanOut, Subscriber
from saltbus.server.intake import Intake


class PullPeer(AckTarget, Protocol):
    """A firing connection, as the server sees it."""

    peer: str

    def stalled_since(self, now: float) -> float: ...

    def close(self) -> None: ...


class SubscriberPeer(Protocol):
    """A listening connection, as the server sees it."""

    @property
    def pending_bytes(self) -> int: ...

    def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class ServerState:
    config: Config
    access: AccessPolicy
    fanout: FanOut
    intake: Intake
    # A saltbus listener's filter and resume point (Server.subscribe).
    subscribe: Callable[[Subscriber, Subscribe], None]
    stats: Callable[[], dict[str, Any]]
    report_dropped: Callable[[Subscriber, int], None]
    report_backlog: Callable[[Subscriber, bool], None]
    pull_connections: set[PullPeer] = field(default_factory=set)
    subscriber_connections: set[SubscriberPeer] = field(default_factory=set)
    # Events refused on the pull socket before the intake, by reason
    # ("too_large", "malformed"): each closes the connection that sent it.
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def connection_count(self) -> int:
        return len(self.pull_connections) + len(self.subscriber_connections)
