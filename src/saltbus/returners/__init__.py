"""Event returners: every journaled event handed to Salt-style returners.

Between the journal and the server in the layer order: it imports
``saltbus.journal``, ``saltbus.config``, ``saltbus.event``, ``saltbus.wire``
and ``saltbus.errors`` only. :class:`ReturnerRunner` feeds the returners of
``config.event_return`` from the journal, each from its own cursor, retrying
a failed batch instead of dropping it.
"""

from saltbus.returners.filters import TagFilter
from saltbus.returners.options import Option
from saltbus.returners.plugins import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    Returner,
    ReturnerFactory,
    ReturnerInfo,
    available,
    describe,
    describe_all,
    load_returner,
)
from saltbus.returners.redact import Redactor, redactor_for
from saltbus.returners.runner import ReturnerRunner
from saltbus.returners.worker import CURSOR_PREFIX, Batching, ReturnerWorker

__all__ = [
    "BUILTINS",
    "CURSOR_PREFIX",
    "ENTRY_POINT_GROUP",
    "Batching",
    "Option",
    "Redactor",
    "Returner",
    "ReturnerFactory",
    "ReturnerInfo",
    "ReturnerRunner",
    "ReturnerWorker",
    "TagFilter",
    "available",
    "describe",
    "describe_all",
    "load_returner",
    "redactor_for",
]
