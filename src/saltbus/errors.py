"""The one exception hierarchy of saltbus.

Everything saltbus raises on purpose derives from :class:`SaltbusError`, so a
program can catch the whole family with one clause. The protocol errors split
the way h11's do: a :class:`LocalProtocolError` means *we* were asked to send
something the protocol cannot carry; a :class:`RemoteProtocolError` means the
peer sent bytes that are not a valid frame.
"""

from __future__ import annotations


class SaltbusError(Exception):
    """Base class of every error saltbus raises on purpose."""


class ConfigError(SaltbusError):
    """A setting is missing, malformed or out of range."""


class ProtocolError(SaltbusError):
    """Bytes on a bus socket do not follow the event protocol."""


class LocalProtocolError(ProtocolError, ValueError):
    """We were asked to encode something the protocol cannot carry (also a
    ValueError, which is what Salt's ``fire_event`` raises for bad input)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame."""


class FrameTooLargeError(LocalProtocolError):
    """An event is larger than ``max_event_size``; it was not sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event of {size} bytes is over max_event_size ({limit} bytes); not sent")
        self.size = size
        self.limit = limit


class FramingMismatchError(RemoteProtocolError):
    """The peer speaks another Salt generation's framing than the one configured."""


class BusError(SaltbusError):
    """A bus could not be reached or used."""


class NoPublisherError(BusError):
    """No publisher listens on the bus's sockets."""


class PublisherRunningError(BusError):
    """A live publisher already owns the sockets we were asked to bind."""


class AccessDeniedError(BusError, PermissionError):
    """This process may not use the bus: the publisher (or the file modes)
    refused it; the message says why."""


class BusClosedError(BusError):
    """The connection to the publisher was closed (by us or by the publisher)."""


class LaggedError(BusClosedError):
    """The publisher disconnected this listener because it fell too far behind;
    reconnecting with resume catches up from the journal."""


class BusTimeoutError(BusError, TimeoutError):
    """An operation on the bus did not complete in the time allowed."""


class JournalUnavailableError(BusError):
    """The publisher did not take an event because its journal cannot commit
    (disk full, read-only, I/O error); the message names the cause."""


class SlowConsumerError(BusError):
    """A subscription's bounded queue overflowed because it was not read fast enough."""


class JournalError(SaltbusError):
    """The event journal could not be opened, written or read, or was asked to
    store events out of sequence."""


class JournalWriteError(JournalError):
    """The journal's file cannot be written (disk full, read-only, I/O error,
    damage). ``reason`` says which in a few words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
