"""The HTTP bridge: the bus as Server-Sent Events, a WebSocket, webhooks and a
live page, in one ASGI app (:func:`create_app`) on Starlette.

Starlette is imported on first use of :func:`create_app` or :class:`Bridge`,
so that the tokens and settings work (and ``saltbus token`` runs) without the
``http`` extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saltbus.http.settings import DEFAULT_HOOK_PREFIX, SALT_HOOK_PREFIX, Settings
from saltbus.http.tokens import Grant, TokenStore

if TYPE_CHECKING:
    from saltbus.http.app import create_app
    from saltbus.http.bridge import Bridge

__all__ = [
    "DEFAULT_HOOK_PREFIX",
    "SALT_HOOK_PREFIX",
    "Bridge",
    "Grant",
    "Settings",
    "TokenStore",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from saltbus.http.app import create_app  # noqa: PLC0415

        return create_app
    if name == "Bridge":
        from saltbus.http.bridge import Bridge  # noqa: PLC0415

        return Bridge
    raise AttributeError(f"module 'saltbus.http' has no attribute {name!r}")
