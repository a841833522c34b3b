"""saltbus: a standalone event bus that speaks SaltStack's event protocol.

Salt's API, with ``saltbus`` in place of ``salt.utils.event``::

    import saltbus
    event = saltbus.MasterEvent("/tmp/bus")
    data = event.get_event(wait=10, tag="auth")
"""

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
from saltbus.errors import (
    AccessDeniedError,
    BusClosedError,
    BusError,
    BusTimeoutError,
    ConfigError,
    FrameTooLargeError,
    LocalProtocolError,
    NoPublisherError,
    ProtocolError,
    PublisherRunningError,
    RemoteProtocolError,
    SaltbusError,
    SlowConsumerError,
)
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
