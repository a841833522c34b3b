"""Salt's event_return_whitelist / event_return_blacklist on tags."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


class TagFilter:
    """Whether a returner gets an event, as Salt's EventReturn decides: with a
    whitelist, only tags matching one of its patterns; then none matching a
    blacklist pattern. Patterns are fnmatch's (``*``, ``?``, ``[seq]``),
    matched case-sensitively, as ``fnmatch.fnmatch`` does on POSIX."""

    def __init__(self, whitelist: Iterable[str] = (), blacklist: Iterable[str] = ()) -> None:
        self.whitelist = tuple(whitelist)
        self.blacklist = tuple(blacklist)
        self._white = _compile(self.whitelist)
        self._black = _compile(self.blacklist)

    @property
    def active(self) -> bool:
        return bool(self.whitelist or self.blacklist)

    def __call__(self, tag: str) -> bool:
        if self._white is not None and not self._white.match(tag):
            return False
        return self._black is None or not self._black.match(tag)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    # fnmatch.translate anchors each pattern with \Z: one alternation is one scan.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
