"""``mqtt``: events published to an MQTT broker, the tag as the topic.

Each event is a JSON message ``{"tag", "data", "seq", "time", "master_id"}``
on topic ``<prefix><tag>`` (``+`` and ``#``, which a topic may not hold, become
``_``). A batch returns once the broker has acknowledged every message (QoS 1
PUBACK, or QoS 2's PUBCOMP): only then does the returner's position move. The
options are ``OPTIONS`` below.

The session is persistent (``clean_session`` false, a fixed ``client_id``),
and a broker with persistence keeps its sessions and their queued QoS 1
messages through a restart: a subscriber with a persistent session of its own
gets what was published while it, or the broker, was away.

At least once: a batch retried after a lost acknowledgement publishes again
what the broker may already have passed on; subscribers that mind use
``seq`` (with ``master_id``) to drop repeats.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from saltbus.errors import ConfigError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known, master_id

OPTIONS: Final = (
    Option("host", "string", "127.0.0.1", "the broker's address"),
    Option("port", "integer", "1883 (8883 with tls)", "the broker's port"),
    Option("username", "string", "", "for the broker's password check"),
    Option("password", "string", "", "for the broker's password check"),
    Option("tls", "boolean", "false", "connect with TLS"),
    Option("ca_certs", "path", "", "CA certificates to check the broker's (tls)"),
    Option("certfile", "path", "", "a client certificate (tls)"),
    Option("keyfile", "path", "", "the client certificate's key (tls)"),
    Option("prefix", "string", "saltbus/", "put before the tag to make the topic"),
    Option("qos", "0, 1 or 2", "1", "the QoS of each message"),
    Option("retain", "boolean", "false", "publish retained messages"),
    Option("client_id", "string", "saltbus-<master_id>", "the MQTT client id"),
    Option(
        "clean_session",
        "boolean",
        "false",
        "start a new session on each connection instead of resuming the broker's",
    ),
    Option("keepalive", "seconds", "60", "MQTT keepalive"),
    Option("timeout", "seconds", "10", "for connecting and for the acknowledgements of a batch"),
    master_id(),
)


class MqttReturner:
    """Publishes a batch and waits for the broker's acknowledgements."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("mqtt", options, OPTIONS)
        self.master_id = str(options.get("master_id") or socket.gethostname())
        self.tls = bool(options.get("tls", False))
        self.host = str(options.get("host", "127.0.0.1"))
        try:
            self.port = int(options.get("port", 8883 if self.tls else 1883))
            self.qos = int(options.get("qos", 1))
            self.keepalive = int(options.get("keepalive", 60))
            self.timeout = float(options.get("timeout", 10))
        except (TypeError, ValueError):
            raise ConfigError("mqtt: port, qos, keepalive and timeout must be numbers") from None
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"mqtt: qos must be 0, 1 or 2, not {self.qos}")
        self.prefix = str(options.get("prefix", "saltbus/"))
        self.retain = bool(options.get("retain", False))
        self.client_id = str(options.get("client_id") or f"saltbus-{self.master_id}")
        self.clean_session = bool(options.get("clean_session", False))
        self._credentials = (options.get("username"), options.get("password"))
        self._tls_files = {
            k: str(options[k]) for k in ("ca_certs", "certfile", "keyfile") if options.get(k)
        }
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._refused: str | None = None

    def topic_for(self, tag: str) -> str:
        return (self.prefix + tag).replace("+", "_").replace("#", "_")

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        client = self._connect()
        try:
            sent = []
            for event in events:
                payload = {
                    "tag": event["tag"],
                    "data": json.loads(to_json(event["data"])),
                    "seq": event.get("seq"),
                    "time": event.get("time"),
                    "master_id": self.master_id,
                }
                info = client.publish(
                    self.topic_for(str(event["tag"])),
                    json.dumps(payload, separators=(",", ":")),
                    qos=self.qos,
                    retain=self.retain,
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"mqtt: publish failed: {mqtt.error_string(info.rc)}")
                sent.append(info)
            deadline = time.monotonic() + self.timeout
            for info in sent:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                if not info.is_published():
                    raise TimeoutError(f"mqtt: the broker did not acknowledge in {self.timeout} s")
        except BaseException:
            self._disconnect()
            raise

    def close(self) -> None:
        self._disconnect()

    def _connect(self) -> mqtt.Client:
        if self._client is not None:
            return self._client
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=self.clean_session,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        user, password = self._credentials
        if user is not None:
            client.username_pw_set(str(user), None if password is None else str(password))
        if self.tls:
            client.tls_set(**self._tls_files)  # type: ignore[arg-type]
        self._connected.clear()
        self._refused = None
        client.on_connect = self._on_connect
        try:
            client.connect(self.host, self.port, self.keepalive)
            client.loop_start()
            if not self._connected.wait(self.timeout):
                raise TimeoutError(f"mqtt: no answer from {self.host}:{self.port}")
            if self._refused is not None:
                raise ConnectionError(f"mqtt: {self.host}:{self.port} refused: {self._refused}")
        except BaseException:
            client.loop_stop()
            client.disconnect()
            raise
        self._client = client
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
