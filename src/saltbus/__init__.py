"""saltbus: a standalone event bus that speaks SaltStack's event protocol.

Salt's API, with ``saltbus`` in place of ``salt.utils.event``::

    import saltbus
    event = saltbus.MasterEvent("/tmp/bus")
    data = event.get_event(wait=10, tag="auth")

Its names but the errors are imported from their modules on first use (see
:mod:`saltbus.lazy`): ``import saltbus``, which every ``saltbus`` command runs
first, does not load the asyncio client and the server it may never use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The errors cost nothing to import, and are what a caller catches.
from saltbus.errors import (
    AccessDeniedError,
    BusClosedError,
    BusError,
    BusTimeoutError,
    ConfigError,
    FrameTooLargeError,
    JournalUnavailableError,
    LocalProtocolError,
    NoPublisherError,
    ProtocolError,
    PublisherRunningError,
    RemoteProtocolError,
    SaltbusError,
    SlowConsumerError,
)
from saltbus.lazy import lazy_names

if TYPE_CHECKING:
    from saltbus.client import (
        AsyncClient,
        Listener,
        MasterEvent,
        MinionEvent,
        SaltEvent,
        Sender,
        Subscription,
        get_event,
    )
    from saltbus.config import Config
    from saltbus.event import Event, MatchType, tagify
    from saltbus.server import EmbeddedPublisher, Server

__all__ = [
    "AccessDeniedError",
    "AsyncClient",
    "BusClosedError",
    "BusError",
    "BusTimeoutError",
    "Config",
    "ConfigError",
    "EmbeddedPublisher",
    "Event",
    "FrameTooLargeError",
    "JournalUnavailableError",
    "Listener",
    "LocalProtocolError",
    "MasterEvent",
    "MatchType",
    "MinionEvent",
    "NoPublisherError",
    "ProtocolError",
    "PublisherRunningError",
    "RemoteProtocolError",
    "SaltEvent",
    "SaltbusError",
    "Sender",
    "Server",
    "SlowConsumerError",
    "Subscription",
    "get_event",
    "tagify",
]

if TYPE_CHECKING:
    __version__: str

# Hidden from type checkers, which see the imports above (see saltbus.lazy).
if not TYPE_CHECKING:
    _lazy_getattr, __dir__ = lazy_names(
        __name__,
        {
            # saltbus.client imports each of its names on first use too.
            "saltbus.client": (
                "AsyncClient",
                "Listener",
                "MasterEvent",
                "MinionEvent",
                "SaltEvent",
                "Sender",
                "Subscription",
                "get_event",
            ),
            "saltbus.config": ("Config",),
            "saltbus.event": ("Event", "MatchType", "tagify"),
            "saltbus.server": ("EmbeddedPublisher", "Server"),
        },
    )

    def __getattr__(name: str) -> object:
        # importlib.metadata costs more to import than the rest of a command's
        # start: the version is looked up when asked for.
        if name == "__version__":
            from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

            try:
                found = version("saltbus")
            except PackageNotFoundError:  # run from a source tree never installed
                found = "unknown"
            globals()["__version__"] = found
            return found
        return _lazy_getattr(name)
