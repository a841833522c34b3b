"""Salt tags as NATS subjects, and tag patterns as subject filters.

A tag's ``/``-separated segments become one NATS token each, under a prefix
(``saltbus.ev.salt.auth`` for ``salt/auth``). A NATS token cannot be empty
or hold ``.`` or whitespace, and ``*`` and ``>`` are wildcards, so each
segment is escaped: ASCII letters, digits, ``-`` and ``_`` stay as they are,
every other character becomes ``%XX`` per byte of its UTF-8 form (``%`` itself
``%25``), and an empty segment becomes a lone ``%``. The escaping is a
bijection, so every tag round-trips; the original tag also travels in the
message itself, which stays the authority.

A subject longer than :data:`MAX_SUBJECT` bytes is cut after the leading
tokens that fit and ends in the token ``%~`` ("truncated"). Filters are
derived so that they never go deeper than what a cut keeps (see
:func:`subject_filter`), so a server-side filter is always a superset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from saltbus.errors import RemoteProtocolError
from saltbus.event import MatchType, TagMatcher, tag_matcher

DEFAULT_PREFIX: Final = "saltbus.ev"
# Well under nats-server's 4 KiB control line, which holds the subject and a reply subject.
MAX_SUBJECT: Final = 2048
EMPTY_TOKEN: Final = "%"
TRUNCATED_TOKEN: Final = "%~"
# The last token of a batch's subject (envelope.py): escape_token never makes
# it, so no tag maps to it.
BATCH_TOKEN: Final = "%+"
_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ESCAPE: Final = tuple(chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256))
_ESCAPED: Final = re.compile(r"%([0-9A-F]{2})")
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_FNMATCH_SPECIAL: Final = re.compile(r"[*?\[]")
_MATCH_TYPES: Final = frozenset(m.value for m in MatchType)


def check_prefix(prefix: str) -> str:
    """A subject prefix: dot-separated tokens of letters, digits, '-' and '_'."""
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"subject prefix {prefix!r} must be dot-separated tokens of letters, digits, "
            "'-' and '_' (no wildcards)"
        )
    return prefix


def escape_token(segment: str) -> str:
    """One tag segment as one NATS token."""
    if not segment:
        return EMPTY_TOKEN
    if segment.isascii() and segment.replace("-", "").replace("_", "").isalnum():
        return segment  # the common case, without a per-byte walk
    return "".join(_ESCAPE[b] for b in segment.encode("utf-8"))


def unescape_token(token: str) -> str:
    """The tag segment a token stands for. Raises :class:`RemoteProtocolError`
    for a token :func:`escape_token` cannot have made."""
    if token == EMPTY_TOKEN:
        return ""
    if not token or token == TRUNCATED_TOKEN:
        raise RemoteProtocolError(f"subject token {token!r} stands for no tag segment")
    parts = _ESCAPED.split(token)
    # split() alternates literal text and captured hex digits.
    raw = bytearray()
    for index, part in enumerate(parts):
        if index % 2:
            raw.append(int(part, 16))
        elif part:
            if "%" in part or not all(ord(c) in _SAFE for c in part):
                raise RemoteProtocolError(f"subject token {token!r} is not escaped as saltbus does")
            raw += part.encode("ascii")
    try:
        segment = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"subject token {token!r} is not UTF-8 once unescaped") from None
    if escape_token(segment) != token:
        # Canonical form only (an escaped letter, lowercase hex): one token per segment.
        raise RemoteProtocolError(f"subject token {token!r} is not escaped as saltbus does")
    return segment


def tag_tokens(tag: str) -> list[str]:
    return [escape_token(segment) for segment in tag.split("/")]


def tag_to_subject(tag: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The subject an event with ``tag`` is published on."""
    subject = ".".join((prefix, *tag_tokens(tag)))
    if len(subject) <= MAX_SUBJECT:
        return subject
    return _truncated(prefix, tag_tokens(tag))


def batch_subject(subject: str) -> str:
    """Where a batch of events on ``subject`` (or on subjects that differ from
    it in the last token only) goes: a filter ``P.>`` selects it exactly
    when it selects those events."""
    return f"{subject.rpartition('.')[0]}.{BATCH_TOKEN}"


def _truncated(prefix: str, tokens: Sequence[str]) -> str:
    room = MAX_SUBJECT - len(prefix) - len(TRUNCATED_TOKEN) - 1
    kept: list[str] = []
    for token in tokens:
        room -= len(token) + 1
        if room < 0:
            break
        kept.append(token)
    return ".".join((prefix, *kept, TRUNCATED_TOKEN))


def subject_to_tag(subject: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The tag a subject stands for. Raises :class:`RemoteProtocolError` for a
    subject outside ``prefix`` or one that was cut (its tag is in the message)."""
    if not subject.startswith(prefix + "."):
        raise RemoteProtocolError(f"subject {subject!r} is not under {prefix!r}")
    tokens = subject[len(prefix) + 1 :].split(".")
    if tokens[-1] == TRUNCATED_TOKEN:
        raise RemoteProtocolError(f"subject {subject[:60]!r}... was cut; read the tag header")
    return "/".join(unescape_token(token) for token in tokens)


# -- patterns ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagPattern:
    """A tag pattern as Salt matches it: ``pattern`` with ``match_type``."""

    pattern: str
    match_type: MatchType = MatchType.STARTSWITH

    @classmethod
    def parse(cls, text: str) -> TagPattern:
        """``PATTERN`` (startswith, Salt's default) or ``TYPE:PATTERN`` with
        TYPE one of startswith, endswith, find, regex, fnmatch."""
        kind, sep, rest = text.partition(":")
        if sep and kind in _MATCH_TYPES:
            return cls(rest, MatchType(kind))
        return cls(text)

    def __str__(self) -> str:
        if self.match_type is MatchType.STARTSWITH and TagPattern.parse(self.pattern) == self:
            return self.pattern
        return f"{self.match_type.value}:{self.pattern}"

    def literal_prefix(self) -> str | None:
        """A prefix every matching tag starts with, or None when there is none
        to rely on (endswith, find, regex)."""
        if self.match_type is MatchType.STARTSWITH:
            return self.pattern
        if self.match_type is MatchType.FNMATCH:
            special = _FNMATCH_SPECIAL.search(self.pattern)
            return self.pattern if special is None else self.pattern[: special.start()]
        return None


def patterns_matcher(patterns: Sequence[TagPattern]) -> TagMatcher | None:
    """One predicate for "a tag matches any of ``patterns``"; None when every
    tag does (no patterns, or an empty one). It runs for every event exported
    and imported: the startswith patterns (Salt's default) are one
    ``str.startswith`` with a tuple, not a call per pattern."""
    if not patterns or any(not p.pattern for p in patterns):
        return None
    prefixes = tuple(p.pattern for p in patterns if p.match_type == MatchType.STARTSWITH)
    others = [
        tag_matcher(p.pattern, p.match_type)
        for p in patterns
        if p.match_type != MatchType.STARTSWITH
    ]
    if not others:
        return lambda tag: tag.startswith(prefixes)
    return lambda tag: tag.startswith(prefixes) or any(match(tag) for match in others)


@dataclass(frozen=True, slots=True)
class SubjectFilter:
    """A server-side filter subject, and whether it selects exactly the tags
    the patterns match (if not, the node filters what it is sent)."""

    subject: str
    exact: bool


def subject_filter(patterns: Sequence[TagPattern], prefix: str = DEFAULT_PREFIX) -> SubjectFilter:
    """The narrowest single filter subject covering every tag the patterns
    match (nats-server 2.9 takes one filter per consumer): the longest common
    run of whole leading segments, then ``>``."""
    everything = SubjectFilter(f"{prefix}.>", True)
    if not patterns or TagPattern("") in patterns:
        return everything
    runs: list[list[str]] = []
    for pattern in patterns:
        literal = pattern.literal_prefix()
        if literal is None:
            return SubjectFilter(f"{prefix}.>", False)
        runs.append(_whole_segments(literal, prefix))
    common = runs[0]
    for run in runs[1:]:
        length = 0
        while length < min(len(common), len(run)) and common[length] == run[length]:
            length += 1
        common = common[:length]
    if not common:
        return SubjectFilter(everything.subject, False)
    subject = ".".join((prefix, *common, ">"))
    exact = len(patterns) == 1 and _exact(patterns[0], len(common))
    return SubjectFilter(subject, exact)


def _whole_segments(literal: str, prefix: str) -> list[str]:
    """The tokens of the segments ``literal`` holds whole (those before its
    last ``/``), as many of them as a cut subject always keeps."""
    segments = literal.split("/")[:-1]
    tokens = [escape_token(segment) for segment in segments]
    room = MAX_SUBJECT - len(prefix) - len(TRUNCATED_TOKEN) - 1
    kept: list[str] = []
    for token in tokens:
        room -= len(token) + 1
        if room < 0:
            break
        kept.append(token)
    return kept


def _exact(pattern: TagPattern, depth: int) -> bool:
    # startswith "a/b/" is exactly the subjects a.b.>; any other pattern, or
    # one whose segments were not all kept, needs the node's own check too.
    if pattern.match_type is not MatchType.STARTSWITH:
        return False
    segments = pattern.pattern.split("/")
    return segments[-1] == "" and len(segments) - 1 == depth
