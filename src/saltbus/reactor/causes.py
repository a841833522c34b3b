"""The loop guard's bookkeeping: what caused an event the reactor fired.

Every event the reactor fires because of another one (``event.send``, the
``ret`` of a reaction) carries ``_saltbus_reactor`` in its data: how many
reactions deep the chain is, and the last links of that chain. A reaction
to an event whose chain is already ``reactor_max_depth`` deep is not run,
and the reactor fires ``saltbus/reactor/loop`` instead: a reaction that
(directly or through others) triggers itself stops there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

CAUSE_KEY: Final = "_saltbus_reactor"
# What the federation's importer marks an event from another node with
# (saltbus.cluster.state.ORIGIN_KEY: the cluster layer sits beside the
# reactor, not below it, so the name is repeated here).
ORIGIN_KEY: Final = "_saltbus_origin"
# Only the last links are carried, so an event's size stays bounded.
CHAIN_KEPT: Final = 20


@dataclass(frozen=True, slots=True)
class Cause:
    depth: int = 0
    chain: tuple[Mapping[str, Any], ...] = ()

    def then(self, reaction: str, tag: str, seq: int | None) -> Cause:
        """The cause of an event fired by ``reaction`` on an event with this cause."""
        link = {"reaction": reaction, "tag": tag, "seq": seq}
        return Cause(self.depth + 1, (*self.chain, link)[-CHAIN_KEPT:])

    def as_data(self) -> dict[str, Any]:
        return {"depth": self.depth, "chain": [dict(link) for link in self.chain]}


def cause_of(data: Mapping[str, Any]) -> Cause:
    """The cause an event's data records (depth 0: not fired by a reaction)."""
    raw = data.get(CAUSE_KEY) if isinstance(data, Mapping) else None
    if not isinstance(raw, Mapping):
        return Cause()
    depth = raw.get("depth")
    chain = raw.get("chain")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        return Cause()
    links = tuple(c for c in chain if isinstance(c, Mapping)) if isinstance(chain, list) else ()
    return Cause(depth, links[-CHAIN_KEPT:])


def with_cause(data: Mapping[str, Any], cause: Cause) -> dict[str, Any]:
    """A copy of ``data`` that records ``cause``."""
    out = dict(data)
    out[CAUSE_KEY] = cause.as_data()
    return out


def origin_node(data: Mapping[str, Any]) -> str | None:
    """The node an event imported through federation was fired on; None for
    an event fired on this node."""
    marker = data.get(ORIGIN_KEY) if isinstance(data, Mapping) else None
    if not isinstance(marker, Mapping):
        return None
    return str(marker.get("node", "?"))
