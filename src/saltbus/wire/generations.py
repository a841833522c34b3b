"""The Salt generations on the wire (WIRE.md, "Salt generations"): how each
delimits frames on the two sockets, and how it stamps events."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from saltbus.errors import LocalProtocolError


class Framing(enum.Enum):
    """How frames are delimited on a socket."""

    BARE = "bare"
    LENGTH_PREFIXED = "length-prefixed"


@dataclass(frozen=True, slots=True)
class Generation:
    """What one Salt release does on the wire (WIRE.md, "Salt generations")."""

    name: str
    pull_framing: Framing
    pub_framing: Framing
    stamp_has_offset: bool
    pub_mode: int
    pull_mode: int


GENERATIONS: Final[Mapping[str, Generation]] = {
    "3006": Generation(
        "3006", Framing.LENGTH_PREFIXED, Framing.LENGTH_PREFIXED, False, 0o600, 0o600
    ),
    "3007": Generation("3007", Framing.BARE, Framing.BARE, False, 0o660, 0o600),
    "3008": Generation("3008", Framing.LENGTH_PREFIXED, Framing.BARE, True, 0o660, 0o600),
}
DEFAULT_GENERATION: Final = "3007"


def generation(name: str) -> Generation:
    try:
        return GENERATIONS[str(name)]
    except KeyError:
        known = ", ".join(GENERATIONS)
        raise LocalProtocolError(f"unknown Salt generation {name!r}; use one of: {known}") from None
