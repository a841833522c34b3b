"""``once_within``: a reaction runs at most once per window (per group).

The first event runs the reaction and opens the window; events within it
are skipped. With ``group_by``, each combination of those data keys' values
has its own window (once per host, say). Expired windows are forgotten, so
a group key with many values costs memory only while its windows are open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final

_MISSING: Final = object()
PRUNE_EVERY: Final = 4096


def group_values(data: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, ...]:
    """The values of ``keys`` in ``data``, as text (a dotted key also looks
    into nested mappings: ``a.b`` is ``data['a']['b']`` when ``data`` has no
    ``a.b``). A missing key groups as null."""
    values = []
    for key in keys:
        value: Any = data.get(key, _MISSING)
        if value is _MISSING and "." in key:
            value = data
            for part in key.split("."):
                value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        values.append(json.dumps(None if value is _MISSING else value, sort_keys=True, default=str))
    return tuple(values)


class Throttle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[Hashable, float] = {}
        self._since_prune = 0
        self.skipped = 0

    def allow(self, key: Hashable, window: float) -> bool:
        """Whether a reaction under ``key`` may run now; if so, its window opens."""
        now = self._clock()
        until = self._until.get(key)
        if until is not None and now < until:
            self.skipped += 1
            return False
        self._until[key] = now + window
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        self._since_prune = 0
        self._until = {k: until for k, until in self._until.items() if until > now}

    def __len__(self) -> int:
        return len(self._until)
