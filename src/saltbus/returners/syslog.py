"""``syslog``: events as RFC 5424 messages over UDP, TCP or the local socket.

Each event is one message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID
[saltbus@32473 tag="..." seq="..." master_id="..."] DATA-AS-JSON``; the
timestamp is when the bus received the event, the MSGID the tag's first
part (``salt``, ``app``...). Options: ``transport`` (``udp``, ``tcp``, or
``unix``, the default), ``host`` (127.0.0.1) and ``port`` (514), or
``socket`` (``/dev/log``); ``facility`` (``local0``, or a number 0-23);
``severity`` (``info``, or 0-7); ``app_name`` (``saltbus``); ``hostname``
(the host's name); ``max_bytes`` (8192: a longer message is cut, as most
receivers would); ``timeout`` (5 s); ``master_id``.

Delivery: TCP (octet-counted framing, RFC 6587) is at least once: a batch
retried after a broken connection may repeat what the receiver already
took. UDP and the local socket are as reliable as datagrams are: a receiver
that is not there loses them without an error, a full local socket is an
error and retried.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Mapping
from typing import Any, Final

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json

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
_KEYS: Final = frozenset(
    (
        "transport",
        "host",
        "port",
        "socket",
        "facility",
        "severity",
        "app_name",
        "hostname",
        "max_bytes",
        "timeout",
        "master_id",
    )
)


class SyslogReturner:
    """One RFC 5424 message per event; one connection (or socket), made lazily."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - _KEYS
        if unknown:
            raise ConfigError(f"syslog: unknown options {sorted(unknown)}")
        self.transport = str(options.get("transport", "unix"))
        if self.transport not in ("udp", "tcp", "unix"):
            raise ConfigError(f"syslog: transport must be udp, tcp or unix, not {self.transport!r}")
        self.host = str(options.get("host", "127.0.0.1"))
        self.socket_path = str(options.get("socket", "/dev/log"))
        try:
            self.port = int(options.get("port", 514))
            self.max_bytes = int(options.get("max_bytes", 8192))
            self.timeout = float(options.get("timeout", 5))
        except (TypeError, ValueError):
            raise ConfigError("syslog: port, max_bytes and timeout must be numbers") from None
        facility = _level(options.get("facility", "local0"), FACILITIES, 23, "facility")
        severity = _level(options.get("severity", "info"), SEVERITIES, 7, "severity")
        self.pri = facility * 8 + severity
        self.app_name = _token(str(options.get("app_name", "saltbus")), 48)
        self.hostname = _token(str(options.get("hostname") or socket.gethostname()), 255)
        self.master_id = str(options.get("master_id") or socket.gethostname())
        self._sock: socket.socket | None = None

    def event_return(self, events: list[dict[str, Any]]) -> None:
        sock = self._connect()
        try:
            for event in events:
                message = self.format(event)
                if self.transport == "tcp":
                    sock.sendall(b"%d %s" % (len(message), message))
                else:
                    sock.send(message)
        except OSError:
            self._disconnect()
            raise

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

    def close(self) -> None:
        self._disconnect()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            if self.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                address: Any = self.socket_path
            else:
                kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(socket.AF_INET, kind)
                address = (self.host, self.port)
            sock.settimeout(self.timeout)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

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
