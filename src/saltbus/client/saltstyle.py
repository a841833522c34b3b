"""Salt's event API (``salt.utils.event``) as a thin face over saltbus's clients.

Programs written for Salt rely on its return conventions, so they are kept:
``get_event`` returns None when ``wait`` passes, ``fire_event`` returns False
when no publisher listens (or the event is over ``max_event_size``: Salt trims
it, saltbus does not send it) and raises ValueError only for bad input.
Underneath, :class:`~saltbus.client.listener.Listener` and
:class:`~saltbus.client.sender.Sender` raise; this module is where those
errors become Salt's values. One difference is on purpose: a ``get_event`` that
times out keeps its connection, so polling with small waits loses no event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from saltbus.client.listener import Listener
from saltbus.client.sender import Sender
from saltbus.config import Config
from saltbus.errors import (
    FrameTooLargeError,
    LocalProtocolError,
    NoPublisherError,
    SaltbusError,
)
from saltbus.event import Event, MatchType, TagMatcher, tag_matcher

log = logging.getLogger("saltbus.client")

EXIT_EVENT: Final = {"tag": "salt/event/exit", "data": {}}


def _config_from(node: str, sock_dir: str | Path | None, opts: Mapping[str, Any] | None) -> Config:
    overrides = {k: v for k, v in (opts or {}).items() if k in _CONFIG_KEYS}
    overrides["node"] = node
    if sock_dir is not None:
        overrides["sock_dir"] = sock_dir
    return Config.load(overrides=overrides)


_CONFIG_KEYS: Final = frozenset(Config.__dataclass_fields__)


class SaltEvent:
    """Salt's ``SaltEvent``: fire events and read them, filtered by tag.

    ``opts`` is a Salt-style options dict; keys saltbus knows (``sock_dir``,
    ``id``, ``ipc_mode``, ``salt_version``, ...) are used, others ignored. With
    ``raise_errors=True`` failures raise saltbus errors instead of returning
    None/False.
    """

    def __init__(
        self,
        node: str,
        sock_dir: str | Path | None = None,
        opts: Mapping[str, Any] | None = None,
        listen: bool = True,
        raise_errors: bool = False,
    ) -> None:
        self.node = node
        self.opts: dict[str, Any] = dict(opts or {})
        self.config = _config_from(node, sock_dir, opts)
        self.sock_dir = str(self.config.sock_dir)
        self.raise_errors = raise_errors
        self._listener = Listener(self.config)
        self._sender = Sender(self.config)
        self._pending: list[Event] = []
        self._pending_tags: list[tuple[str, MatchType]] = []
        if listen:
            self.connect_pub()

    # -- connection ------------------------------------------------------

    @property
    def cpub(self) -> bool:
        """Whether the listener is connected (Salt's attribute name)."""
        return self._listener.connected

    def connect_pub(self, timeout: float | None = None) -> bool:
        try:
            self._listener.connect(timeout or 0.0)
        except NoPublisherError:
            if self.raise_errors:
                raise
            return False
        return True

    def close_pub(self) -> None:
        self._listener.close()

    # -- subscriptions (Salt's pending-event cache) ------------------------

    def subscribe(self, tag: str | None = None, match_type: str | None = None) -> None:
        """Keep events matching ``tag`` that arrive while waiting for another tag."""
        if tag is None:
            return
        entry = (tag, self._match_type(match_type))
        if entry not in self._pending_tags:
            self._pending_tags.append(entry)

    def unsubscribe(self, tag: str | None, match_type: str | None = None) -> None:
        if tag is None:
            return
        entry = (tag, self._match_type(match_type))
        if entry in self._pending_tags:
            self._pending_tags.remove(entry)
        self._pending = [e for e in self._pending if self._is_pending(e.tag)]

    def _match_type(self, match_type: str | None) -> MatchType:
        return MatchType.parse(match_type, self.config.event_match_type)

    def _is_pending(self, tag: str) -> bool:
        return any(tag_matcher(t, m)(tag) for t, m in self._pending_tags)

    # -- reading -----------------------------------------------------------

    def get_event(
        self,
        wait: float = 5,
        tag: str = "",
        full: bool = False,
        match_type: str | None = None,
        no_block: bool = False,
        auto_reconnect: bool = False,
    ) -> dict[str, Any] | None:
        """The next event matching ``tag``: its data, or ``{'tag', 'data'}`` with
        ``full=True``; None when ``wait`` seconds pass (``wait=0``: for ever;
        ``no_block=True``: only what has already arrived)."""
        matcher = tag_matcher(tag, self._match_type(match_type))
        try:
            event = self._take_pending(matcher)
            if event is None:
                timeout = 0.0 if no_block else (None if not wait else float(wait))
                event = self._read(matcher, timeout, auto_reconnect)
        except KeyboardInterrupt:
            return dict(EXIT_EVENT) if full else {}
        if event is None:
            return None
        return event.as_salt() if full else dict(event.data)

    def iter_events(
        self,
        tag: str = "",
        full: bool = False,
        match_type: str | None = None,
        auto_reconnect: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yield matching events for ever."""
        while True:
            data = self.get_event(
                tag=tag, full=full, match_type=match_type, auto_reconnect=auto_reconnect
            )
            if data is not None:
                yield data

    def _take_pending(self, matcher: TagMatcher) -> Event | None:
        for index, event in enumerate(self._pending):
            if matcher(event.tag):
                del self._pending[index]
                return event
        return None

    def _read(
        self, matcher: TagMatcher, timeout: float | None, auto_reconnect: bool
    ) -> Event | None:
        # Unless asked to raise, wait for the publisher to come (back) until
        # `wait` passes, resuming where the listener was; Salt returns None at
        # once here and loses its subscription.
        reconnect = auto_reconnect or not self.raise_errors
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self._listener.receive(remaining, reconnect=reconnect)
            if event is None:
                return None
            if matcher(event.tag):
                return event
            if self._is_pending(event.tag):
                self._pending.append(event)

    # -- firing ------------------------------------------------------------

    def fire_event(
        self, data: Mapping[str, Any], tag: str, timeout: float = 1000, ack: bool = False
    ) -> bool | int:
        """Fire an event; True when sent, False when it was not (no publisher
        took it within ``timeout`` ms, or it was too large). With ``ack``, wait
        until the publisher journaled it and return its sequence number (an
        int) instead of True; False when it did not acknowledge in time.

        Bus trouble returns False, as in Salt (``raise_errors=True`` raises the
        saltbus error instead). So does data over ``max_event_size``, with a
        warning: Salt trims such data and sends it, saltbus refuses to send a
        changed event. Bad input raises :class:`LocalProtocolError`, which is a
        ValueError as in Salt: an empty tag or one that is not a str, data that
        is not a mapping, data msgpack cannot carry.
        """
        if isinstance(tag, str) and not tag:
            raise LocalProtocolError("Empty tag.")
        if not isinstance(data, Mapping):
            raise LocalProtocolError(f"Dict object expected, not {type(data).__name__!r}.")
        try:
            event = self._sender.fire(tag, data, timeout=timeout / 1000, ack=ack)
        except FrameTooLargeError as exc:
            if self.raise_errors:
                raise
            log.warning("fire_event(%r) returned False: %s", tag, exc, extra={"tag": tag})
            return False
        except LocalProtocolError:
            raise
        except SaltbusError as exc:
            if self.raise_errors:
                raise
            log.debug("fire_event(%r) failed: %s", tag, exc)
            return False
        return event.seq if ack and event.seq is not None else True

    def fire_master(self, data: Mapping[str, Any], tag: str, timeout: float = 1000) -> bool:
        """Salt's wrapper shape for events meant for the master."""
        msg = {"tag": tag, "data": data, "events": None, "pretag": None}
        return self.fire_event(msg, "fire_master", timeout) is not False

    # -- lifetime ----------------------------------------------------------

    def destroy(self) -> None:
        self._listener.close()
        self._sender.close()

    def __enter__(self) -> SaltEvent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


class MasterEvent(SaltEvent):
    """A master's bus, addressed by its ``sock_dir``."""

    def __init__(
        self,
        sock_dir: str | Path | None,
        opts: Mapping[str, Any] | None = None,
        listen: bool = True,
        raise_errors: bool = False,
    ) -> None:
        super().__init__("master", sock_dir, opts, listen=listen, raise_errors=raise_errors)


class MinionEvent(SaltEvent):
    """A minion's bus: ``opts`` gives ``sock_dir`` and ``id``."""

    def __init__(
        self, opts: Mapping[str, Any], listen: bool = True, raise_errors: bool = False
    ) -> None:
        super().__init__(
            "minion", opts.get("sock_dir"), opts, listen=listen, raise_errors=raise_errors
        )


def get_event(
    node: str,
    sock_dir: str | Path | None = None,
    opts: Mapping[str, Any] | None = None,
    listen: bool = True,
    raise_errors: bool = False,
) -> SaltEvent:
    """Salt's factory: a :class:`MasterEvent` for ``node='master'``, else a :class:`SaltEvent`."""
    if node == "master":
        return MasterEvent(sock_dir, opts, listen=listen, raise_errors=raise_errors)
    return SaltEvent(node, sock_dir, opts, listen=listen, raise_errors=raise_errors)
