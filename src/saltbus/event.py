"""The event model: the :class:`Event` value, Salt's tag helpers and tag matchers.

Nothing here knows about bytes or sockets; :mod:`saltbus.wire` turns events
into frames and back.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from saltbus.errors import ConfigError

TAG_SEPARATOR = "/"

# Salt's ``tagify`` maps these prefixes through a table; the table maps each to
# itself today, but keeping it explicit keeps the behaviour tied to Salt's.
_TAG_PREFIXES: Mapping[str, str] = {
    name: name
    for name in (
        "auth",
        "job",
        "key",
        "minion",
        "syndic",
        "run",
        "wheel",
        "cloud",
        "fileserver",
        "queue",
    )
}


@dataclass(frozen=True, slots=True)
class Event:
    """One event on the bus: a tag and a data mapping.

    ``seq`` is the sequence number the saltbus publisher gave the event (None
    when it came from a Salt publisher, which numbers nothing).
    """

    tag: str
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def as_salt(self) -> dict[str, Any]:
        """The ``{'tag', 'data'}`` dict Salt's ``get_event(full=True)`` returns."""
        result: dict[str, Any] = {"tag": self.tag, "data": self.data}
        if self.seq is not None:
            result["seq"] = self.seq
        return result


def tagify(suffix: str | Iterable[str] = "", prefix: str = "", base: str = "salt") -> str:
    """Build a tag from parts, as Salt's ``salt.utils.event.tagify`` does.

    >>> tagify(["abc", "new"], "job")
    'salt/job/abc/new'
    """
    parts: list[object] = [base, _TAG_PREFIXES.get(prefix, prefix)]
    if isinstance(suffix, str | bytes | bytearray) or not isinstance(suffix, Iterable):
        parts.append(suffix)
    else:
        parts.extend(suffix)
    # As Salt: every part becomes a str first, and only then are empty ones
    # dropped, so 0, None and False are kept as "0", "None" and "False".
    return TAG_SEPARATOR.join(text for text in map(_tag_part, parts) if text)


def _tag_part(part: object) -> str:
    # Salt's to_str: bytes are decoded, anything else goes through str().
    if isinstance(part, bytes | bytearray):
        return part.decode("utf-8")
    return str(part)


def utc_stamp(with_offset: bool = False) -> str:
    """The ``_stamp`` Salt's firing client adds: ISO-8601 UTC, microseconds unless 0.

    Salt 3006 and 3007 write a naive timestamp; 3008 appends ``+00:00``.
    """
    now = datetime.now(UTC)
    return now.isoformat() if with_offset else now.replace(tzinfo=None).isoformat()


class MatchType(enum.StrEnum):
    """How a subscription's tag is compared with an event's tag (Salt's five)."""

    STARTSWITH = "startswith"
    ENDSWITH = "endswith"
    FIND = "find"
    REGEX = "regex"
    FNMATCH = "fnmatch"

    @classmethod
    def parse(cls, value: str | MatchType | None, default: MatchType | None = None) -> MatchType:
        if value is None or value == "":
            return default if default is not None else cls.STARTSWITH
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown match type {value!r}; use one of: {names}") from None


TagMatcher = Callable[[str], bool]
_MATCH_TYPES = frozenset(m.value for m in MatchType)


def _match_all(_tag: str) -> bool:
    return True


@functools.lru_cache(maxsize=1024)
def _anchored_regex(pattern: str) -> re.Pattern[str]:
    # Salt prepends "^" and uses search(), which anchors at the start only.
    try:
        return re.compile("^" + pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, (((((...)))))
        raise ConfigError(f"invalid regex tag pattern {pattern!r}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def tag_matcher(pattern: str, match_type: MatchType = MatchType.STARTSWITH) -> TagMatcher:
    """A predicate telling whether an event tag matches ``pattern``.

    An empty pattern matches every tag, whatever the match type: a listener
    that names no tag wants everything, as in Salt.
    """
    if not pattern:
        return _match_all
    if match_type not in _MATCH_TYPES:
        raise ConfigError(f"unknown match type {match_type!r}")
    # "==", not "is": the cache treats "regex" and MatchType.REGEX as one key,
    # so a plain str must select the same matcher as its MatchType.
    if match_type == MatchType.STARTSWITH:
        return lambda tag: tag.startswith(pattern)
    if match_type == MatchType.ENDSWITH:
        return lambda tag: tag.endswith(pattern)
    if match_type == MatchType.FIND:
        return lambda tag: pattern in tag
    if match_type == MatchType.REGEX:
        search = _anchored_regex(pattern).search
        return lambda tag: search(tag) is not None
    return functools.partial(_fnmatch, pattern=pattern)


def _fnmatch(tag: str, pattern: str) -> bool:
    return fnmatch.fnmatch(tag, pattern)
