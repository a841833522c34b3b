"""A package's public names, imported from their modules on first use (PEP 562).

``import saltbus`` runs before any ``saltbus`` command does anything, and
``saltbus.client`` before any client is used; a package that imported all it
exports would have ``saltbus fire`` load the server, asyncio and SQLite. A
package lists instead where each name comes from::

    if TYPE_CHECKING:  # what type checkers and IDEs see
        from saltbus.client.aio import AsyncClient

    if not TYPE_CHECKING:
        __getattr__, __dir__ = lazy_names(__name__, {"saltbus.client.aio": ("AsyncClient",)})

The ``__getattr__`` stays hidden from type checkers: with one, a misspelt
``saltbus.Nmae`` would type-check (as whatever ``__getattr__`` returns).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_names(
    package: str, origins: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names are
    those of ``origins`` (module name: names it defines)."""
    where = {name: module for module, names in origins.items() for name in names}

    def getattr_(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value: object = getattr(importlib.import_module(module), name)
        # Kept in the package, so that __getattr__ runs once per name.
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return getattr_, dir_
