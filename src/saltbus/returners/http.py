"""``http``: batches POSTed to an HTTP endpoint: NDJSON, Elasticsearch or
OpenSearch ``_bulk``, or Splunk HEC.

Options: ``url``; ``format`` (``ndjson``, the default: one
``{"tag", "data", "seq", "time", "master_id"}`` line per event;
``elasticsearch``: a ``_bulk`` body, each document indexed into ``index``, a
template over ``{prefix}`` (the tag up to its first ``/``) and ``{date}``
(``YYYY.MM.DD`` of the event), ``saltbus-{date}`` by default, with the id
``<master_id>-<seq>``, so a retried batch overwrites rather than duplicates;
``splunk``: HEC events with ``token``, sent as ``Authorization: Splunk
<token>``); ``headers`` (a mapping); ``username`` and ``password`` (basic
auth); ``ca_certs`` and ``verify`` (true) for HTTPS; ``timeout`` (10 s);
``dead_letter`` (a file; ``http-dead-letter.jsonl`` in saltbus's state
directory by default); ``master_id``.

A 2xx is success. A 429 or a 5xx (or no answer) fails the batch: it is
retried, after the ``Retry-After`` the server gave when it gave one. Any
other 4xx will not get better by retrying: the batch is appended to the
dead-letter file (one ``{"status", "reason", "url", "event"}`` line per
event), reported in the log and in ``saltbus stats``, and the returner goes
on. For ``_bulk``, the items the server refused with a 4xx go there alone.

NDJSON and Splunk are at least once (a retried batch is sent again);
Elasticsearch/OpenSearch exactly once, by document id.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from saltbus.errors import ConfigError, SaltbusError
from saltbus.returners.jsonsafe import to_json
from saltbus.returners.options import Option, check_known, master_id

log = logging.getLogger("saltbus.returners")

FORMATS: Final = ("ndjson", "elasticsearch", "splunk")
OPTIONS: Final = (
    Option("url", "http(s) URL", "", "where batches are POSTed (required)"),
    Option("format", "ndjson, elasticsearch or splunk", "ndjson", "the body of a batch"),
    Option(
        "index",
        "template",
        "saltbus-{date}",
        "elasticsearch: the index, over {prefix} and {date} (YYYY.MM.DD)",
    ),
    Option("token", "string", "", "splunk: the HEC token (required there)"),
    Option("headers", "mapping", "", "extra request headers"),
    Option("username", "string", "", "basic auth"),
    Option("password", "string", "", "basic auth"),
    Option("ca_certs", "path", "", "CA certificates for https"),
    Option("verify", "boolean", "true", "check the server's certificate (https)"),
    Option("timeout", "seconds", "10", "for each request"),
    Option(
        "dead_letter",
        "path",
        "http-dead-letter.jsonl in the state directory",
        "where batches refused with a 4xx are set aside",
    ),
    master_id(),
)
_CONTENT_TYPES: Final = {
    "ndjson": "application/x-ndjson",
    "elasticsearch": "application/x-ndjson",
    "splunk": "application/json",
}


class HttpRetryError(SaltbusError, ConnectionError):
    """The server asked for the batch again later; ``retry_after`` seconds
    when it said how long (the runner waits at least that)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HttpReturner:
    """One POST per batch."""

    OPTIONS: Final = OPTIONS

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_known("http", options, OPTIONS)
        url = options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"http: url must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.format = str(options.get("format", "ndjson"))
        if self.format not in FORMATS:
            raise ConfigError(f"http: format must be one of {', '.join(FORMATS)}")
        self.index = str(options.get("index", "saltbus-{date}"))
        try:
            self.index.format(prefix="a", date="2026.01.01")
            self.timeout = float(options.get("timeout", 10))
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ConfigError(f"http: bad index template or timeout: {exc}") from None
        self.master_id = str(options.get("master_id") or socket.gethostname())
        headers = options.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConfigError(f"http: headers must be a mapping, not {headers!r}")
        self.headers = {str(k): str(v) for k, v in headers.items()}
        self.headers.setdefault("Content-Type", _CONTENT_TYPES[self.format])
        if self.format == "splunk":
            if not options.get("token"):
                raise ConfigError("http: format splunk needs token (the HEC token)")
            self.headers.setdefault("Authorization", f"Splunk {options['token']}")
        if options.get("username") is not None:
            basic = f"{options['username']}:{options.get('password') or ''}".encode()
            self.headers.setdefault("Authorization", "Basic " + base64.b64encode(basic).decode())
        self.dead_letter = Path(
            os.path.expanduser(str(options.get("dead_letter") or _default_dead_letter()))
        )
        self._context: ssl.SSLContext | None = None
        if url.startswith("https://"):
            self._context = ssl.create_default_context(cafile=options.get("ca_certs"))
            if options.get("verify") is False:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self.sent = 0
        self.dead_lettered = 0

    def event_return(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        status, reason, body = self._post(self._body(events))
        if 200 <= status < 300:
            if self.format == "elasticsearch":
                self._bulk_items(events, body)
            self.sent += len(events)
            return
        self._refused(events, status, reason)

    def close(self) -> None:
        """Nothing held open: each batch is one request."""

    def stats(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "dead_lettered": self.dead_lettered,
            "dead_letter": str(self.dead_letter),
        }

    # -- bodies -----------------------------------------------------------------

    def _document(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "tag": event["tag"],
            "data": json.loads(to_json(event["data"])),
            "seq": event.get("seq"),
            "time": event.get("time"),
            "master_id": self.master_id,
        }

    def _body(self, events: list[dict[str, Any]]) -> bytes:
        lines = []
        for event in events:
            doc = self._document(event)
            if self.format == "elasticsearch":
                action: dict[str, Any] = {"_index": self._index_for(event)}
                if event.get("seq") is not None:
                    action["_id"] = f"{self.master_id}-{event['seq']}"
                lines.append(_dumps({"index": action}))
                lines.append(_dumps(doc))
            elif self.format == "splunk":
                hec: dict[str, Any] = {"host": self.master_id, "source": "saltbus"}
                if event.get("time") is not None:
                    hec["time"] = event["time"]
                lines.append(_dumps({**hec, "sourcetype": "_json", "event": doc}))
            else:
                lines.append(_dumps(doc))
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _index_for(self, event: Mapping[str, Any]) -> str:
        when = event.get("time")
        stamp = datetime.datetime.fromtimestamp(
            when if isinstance(when, int | float) else time.time(), datetime.UTC
        )
        prefix = str(event["tag"]).partition("/")[0]
        return self.index.format(prefix=prefix, date=stamp.strftime("%Y.%m.%d")).lower()

    # -- the request --------------------------------------------------------------

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as answer:
                return int(answer.status), str(answer.reason), answer.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status = int(exc.code)
                if status == 429 or status >= 500:
                    raise HttpRetryError(
                        f"http: {self.url} answered {status} {exc.reason}",
                        _retry_after(exc.headers.get("Retry-After")),
                    ) from None
                return status, str(exc.reason), exc.read()

    def _refused(self, events: list[dict[str, Any]], status: int, reason: str) -> None:
        if 400 <= status < 500:
            self._set_aside(events, status, reason)
            return
        # 1xx and 3xx (redirects are followed by urllib): not stored, try again.
        raise HttpRetryError(f"http: {self.url} answered {status} {reason}", None)

    def _bulk_items(self, events: list[dict[str, Any]], body: bytes) -> None:
        try:
            answer = json.loads(body)
        except ValueError:
            return  # not an Elasticsearch answer: the 2xx is all there is to go by
        if not isinstance(answer, dict) or not answer.get("errors"):
            return
        items = answer.get("items") or []
        again = []
        refused: list[tuple[dict[str, Any], int, str]] = []
        for event, item in zip(events, items, strict=False):
            result: dict[str, Any] = next(iter(item.values()), {}) if isinstance(item, dict) else {}
            status = int(result.get("status", 200))
            if status == 429 or status >= 500:
                again.append(event)
            elif status >= 400:
                refused.append((event, status, json.dumps(result.get("error"))))
        for event, status, reason in refused:
            self._set_aside([event], status, reason)
        if again:
            # By document id, the items that went through are overwritten, not duplicated.
            raise HttpRetryError(f"http: {len(again)} bulk items were refused for now", None)

    def _set_aside(self, events: list[dict[str, Any]], status: int, reason: str) -> None:
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            _dumps(
                {"status": status, "reason": reason, "url": self.url, "event": self._document(e)}
            )
            + "\n"
            for e in events
        )
        with open(self.dead_letter, "a", encoding="utf-8") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())
        self.dead_lettered += len(events)
        log.error(
            "returner http: %s refused %d events with %d %s; they are in %s",
            self.url,
            len(events),
            status,
            reason,
            self.dead_letter,
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _default_dead_letter() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/saltbus/http-dead-letter.jsonl")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "saltbus" / "http-dead-letter.jsonl"
