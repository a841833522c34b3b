"""Redaction: values kept from leaving the host, by the ``redact:`` rules.

Rules (``config.redact``, checked by ``saltbus.config``): ``keys``, fnmatch
patterns on key names anywhere in the data, case-insensitive; ``paths``,
dotted paths from the data's top (``env.DB_PASS``, ``creds.*.secret``; a
``*`` is one level, a list item is its index); ``values``, regular expressions
whose matches in any string value are replaced; ``defaults`` (true): Salt's
usual suspects, below; ``marker`` (``**REDACTED**``).

A redacted event's data gets ``_redacted``: the paths of what was replaced,
sorted, so a reader knows the value was there and was kept back. Redacting
twice changes nothing more (the journal may already be redacted).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from saltbus.errors import RemoteProtocolError
from saltbus.wire import pack_body, unpack_body

MARKER: Final = "**REDACTED**"
REDACTED_KEY: Final = "_redacted"
# Key names that carry credentials in Salt's events (cmd.run environments,
# pillar data, cloud provider profiles).
DEFAULT_KEYS: Final = (
    "*password*",
    "*passwd*",
    "*token*",
    "*secret*",
    "*private_key*",
    "aws_access_key_id",
)
# AWS access key ids and PEM private keys, wherever they appear in text.
DEFAULT_VALUES: Final = (
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
)


class Redactor:
    """Applies one set of rules; :meth:`redact` returns new data, or the
    same object when nothing matched."""

    def __init__(self, rules: Mapping[str, Any]) -> None:
        defaults = bool(rules.get("defaults", True))
        keys = [*(DEFAULT_KEYS if defaults else ()), *rules.get("keys", ())]
        values = [*(DEFAULT_VALUES if defaults else ()), *rules.get("values", ())]
        self.marker = str(rules.get("marker", MARKER))
        self._keys = (
            re.compile("|".join(f"(?:{fnmatch.translate(k.lower())})" for k in keys))
            if keys
            else None
        )
        self._values = re.compile("|".join(f"(?:{v})" for v in values), re.S) if values else None
        self._paths = [tuple(str(p).split(".")) for p in rules.get("paths", ())]

    def redact(self, data: Any) -> Any:
        found: list[str] = []
        result = self._walk(data, (), found)
        if not found:
            return data
        if isinstance(result, dict):
            already = result.get(REDACTED_KEY)
            previous = already if isinstance(already, list) else []
            result[REDACTED_KEY] = sorted({*map(str, previous), *found})
        return result

    def redact_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A returner's event dict with its ``data`` redacted."""
        data = self.redact(event["data"])
        return event if data is event["data"] else {**event, "data": data}

    def redact_body(self, body: bytes) -> bytes:
        """A packed event redacted (the same bytes when nothing matched, or
        when it cannot be decoded: it is passed on as it came)."""
        try:
            tag, data = unpack_body(body)
        except RemoteProtocolError:
            return body
        redacted = self.redact(data)
        return body if redacted is data else pack_body(tag, redacted)

    def _walk(self, value: Any, path: tuple[str, ...], found: list[str]) -> Any:
        if isinstance(value, Mapping):
            changed: dict[Any, Any] | None = None
            for key, item in value.items():
                if key == REDACTED_KEY and not path:
                    continue
                where = (*path, str(key))
                if item != self.marker and self._key_matches(str(key), where):
                    new: Any = self.marker
                    found.append(".".join(where))
                else:
                    new = self._walk(item, where, found)
                if new is not item:
                    if changed is None:
                        changed = dict(value)
                    changed[key] = new
            return value if changed is None else changed
        if isinstance(value, list | tuple):
            items = []
            for index, item in enumerate(value):
                where = (*path, str(index))
                if item != self.marker and self._path_matches(where):
                    items.append(self.marker)
                    found.append(".".join(where))
                else:
                    items.append(self._walk(item, where, found))
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items
        if isinstance(value, str) and self._values is not None:
            replaced = self._values.sub(self.marker, value)
            if replaced != value:
                found.append(".".join(path))
                return replaced
        return value

    def _key_matches(self, key: str, where: Sequence[str]) -> bool:
        if self._keys is not None and self._keys.match(key.lower()):
            return True
        return self._path_matches(where)

    def _path_matches(self, where: Sequence[str]) -> bool:
        return any(
            len(rule) == len(where) and all(map(fnmatch.fnmatchcase, where, rule))
            for rule in self._paths
        )


def redactor_for(rules: Mapping[str, Any] | None) -> Redactor | None:
    """The redactor of ``config.redact`` (None when redaction is off)."""
    return None if rules is None else Redactor(rules)
