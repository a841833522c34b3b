"""The soak's reaction: its side effect, one event id a line, is what the
reconciler reads to see that the reactor ran it (``python`` action)."""

from __future__ import annotations

from typing import Any


def record(tag: str, data: dict[str, Any], path: str) -> str:
    event_id = str(data.get("id"))
    with open(path, "a", encoding="utf-8") as out:
        out.write(event_id + "\n")
    return event_id
