"""``syslog``: events as RFC 5424 messages over UDP, TCP or the local socket.

Each event is one message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID
[saltbus@32473 tag="..." seq="..." master_id="..."] DATA-AS-JSON``; the
timestamp is when the bus received the event, the MSGID the tag's first
part (``salt``, ``app``...). The options are ``OPTIONS`` below.

Delivery. TCP (octet-counted framing, RFC 6587) and the local socket are at
least once. Neither acknowledges what the receiver took: bytes a write put
in the kernel's buffers are lost when the receiver goes away before reading
them, and the write had succeeded. So the returner keeps what it wrote last
(``resend_bytes``), checks before each batch that the connection is still
there (TCP: the peer has not closed it), and after any broken connection
writes that again on the new one before the batch: a receiver restart
repeats up to ``resend_bytes`` of messages rather than losing any. What went
out just before the receiver went away is written again with the next
batch, not before. UDP is at most once: datagrams to a receiver that is not
there are lost without an error (the socket is not connected, so no ICMP
error is reported), and the returner goes on.
"""

from __future__ import annotations

import collections
import datetime
import select
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known, master_id

# About what the kernel buffers of a loopback connection hold before the
# receiver reads: what may be lost, unnoticed, when it goes away.
RESEND_BYTES: Final = 256 * 1024
# RFC 5612's enterprise number for documentation: an SD-ID of our own.
SD_ID: Final = "saltbus@32473"
FACILITIES: Final = {
    **{name: n for n, name in enumerate(("kern", "user", "mail", "daemon", "auth", "syslog"))},
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES: Final = {
    name: n
    for n, name in enumerate(
        ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
    )
}
OPTIONS: Final = (
    Option("transport", "udp, tcp or unix", "unix", "how messages go to the receiver"),
    Option("host", "string", "127.0.0.1", "the receiver's address (udp, tcp)"),
    Option("port", "integer", "514", "the receiver's port (udp, tcp)"),
    Option("socket", "path", "/dev/log", "the receiver's datagram socket (unix)"),
    Option("facility", "name or 0-23", "local0", "the facility in each message's PRI"),
    Option("severity", "name or 0-7", "info", "the severity in each message's PRI"),
    Option("app_name", "string", "saltbus", "the APP-NAME field"),
    Option("hostname", "string", "the host's name", "the HOSTNAME field"),
    Option("max_bytes", "integer", "8192", "a longer message is cut to this (0: never)"),
    Option("timeout", "seconds", "5", "for connecting and for each write"),
    Option(
        "resend_bytes",
        "integer",
        str(RESEND_BYTES),
        "what was written last, written again after a broken connection (tcp, unix; 0: off)",
    ),
    master_id(),
)


class SyslogReturner:
    """One RFC 5424 message per event; one connection (or socket), made lazily."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("syslog", options, OPTIONS)
        self.transport = str(options.get("transport", "unix"))
        if self.transport not in ("udp", "tcp", "unix"):
            raise ConfigError(f"syslog: transport must be udp, tcp or unix, not {self.transport!r}")
        self.host = str(options.get("host", "127.0.0.1"))
        self.socket_path = str(options.get("socket", "/dev/log"))
        try:
            self.port = int(options.get("port", 514))
            self.max_bytes = int(options.get("max_bytes", 8192))
            self.timeout = float(options.get("timeout", 5))
            self.resend_bytes = int(options.get("resend_bytes", RESEND_BYTES))
        except (TypeError, ValueError):
            raise ConfigError(
                "syslog: port, max_bytes, timeout and resend_bytes must be numbers"
            ) from None
        facility = _level(options.get("facility", "local0"), FACILITIES, 23, "facility")
        severity = _level(options.get("severity", "info"), SEVERITIES, 7, "severity")
        self.pri = facility * 8 + severity
        self.app_name = _token(str(options.get("app_name", "saltbus")), 48)
        self.hostname = _token(str(options.get("hostname") or socket.gethostname()), 255)
        self.master_id = str(options.get("master_id") or socket.gethostname())
        self._sock: socket.socket | None = None
        # The messages written last (newest at the end), resend_bytes at most.
        self._written: collections.deque[bytes] = collections.deque()
        self._written_bytes = 0
        self._connected = False  # once: later connections are reconnections
        self.reconnects = 0
        self.resent = 0

    def event_return(self, events: list[dict[str, Any]]) -> None:
        messages = [self.format(event) for event in events]
        if self._sock is not None and not self._alive(self._sock):
            self._disconnect()
        try:
            if self._sock is None:
                self._sock = self._connect()
                if self._connected:
                    self.reconnects += 1
                self._connected = True
                if self._written:
                    # What the receiver may not have read before the last
                    # connection broke: at least once, not at most.
                    self.resent += len(self._written)
                    self._write(self._sock, self._written)
            self._write(self._sock, messages)
        except OSError:
            self._disconnect()
            raise
        self._remember(messages)

    def format(self, event: Mapping[str, Any]) -> bytes:
        """The RFC 5424 message of ``event``, cut to max_bytes."""
        tag = str(event["tag"])
        when = event.get("time")
        stamp = (
            datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="microseconds")
            if isinstance(when, int | float)
            else "-"
        ).replace("+00:00", "Z")
        seq = event.get("seq")
        params = [("tag", tag), ("master_id", self.master_id)]
        if seq is not None:
            params.insert(1, ("seq", str(seq)))
        data = " ".join(f'{name}="{_sd_escape(value)}"' for name, value in params)
        msgid = _token(tag.partition("/")[0] or "-", 32)
        head = f"<{self.pri}>1 {stamp} {self.hostname} {self.app_name} - {msgid} [{SD_ID} {data}] "
        message = (head + to_json(event["data"])).encode("utf-8")
        return message[: self.max_bytes] if self.max_bytes > 0 else message

    def stats(self) -> dict[str, int]:
        return {"reconnects": self.reconnects, "resent": self.resent}

    def close(self) -> None:
        self._disconnect()

    def _write(self, sock: socket.socket, messages: Iterable[bytes]) -> None:
        for message in messages:
            if self.transport == "tcp":
                sock.sendall(b"%d %s" % (len(message), message))
            elif self.transport == "udp":
                sock.sendto(message, (self.host, self.port))
            else:
                sock.send(message)

    def _remember(self, messages: list[bytes]) -> None:
        if self.transport == "udp" or self.resend_bytes <= 0:
            return
        written = self._written
        for message in messages:
            written.append(message)
            self._written_bytes += len(message)
        while written and self._written_bytes > self.resend_bytes:
            self._written_bytes -= len(written.popleft())

    def _alive(self, sock: socket.socket) -> bool:
        """False when the receiver closed a TCP connection (or reset it): the
        next write would still succeed, into a buffer nobody reads."""
        if self.transport != "tcp":
            return True  # a datagram to a closed receiver fails by itself
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        if not poll.poll(0):
            return True  # nothing to read, no close, no error
        try:
            # A syslog receiver sends nothing: readable means closed, or reset.
            return sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def _connect(self) -> socket.socket:
        if self.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address: Any = self.socket_path
        elif self.transport == "tcp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (self.host, self.port)
        else:
            # Not connected: a receiver that is down costs datagrams, never an
            # error (a connected socket would report the ICMP of an earlier one).
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(self.timeout)
            return sock
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _level(value: Any, names: Mapping[str, int], top: int, what: str) -> int:
    if isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top:
        return value
    raise ConfigError(f"syslog: {what} must be one of {', '.join(names)} or 0-{top}, not {value!r}")


def _token(text: str, limit: int) -> str:
    # RFC 5424 header fields: printable US-ASCII without spaces.
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
