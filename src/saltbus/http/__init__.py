"""The HTTP bridge: the bus as Server-Sent Events, a WebSocket, webhooks and a
live page, in one ASGI app (:func:`create_app`) on Starlette.

The names are imported from their modules on first use (see
:mod:`saltbus.lazy`): Starlette only with :func:`create_app` or :class:`Bridge`,
so that the tokens and settings work (and ``saltbus token`` runs) without the
``http`` extra installed, and every ``saltbus`` command, which reads the
settings' defaults for its help, loads neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saltbus.lazy import lazy_names

if TYPE_CHECKING:
    from saltbus.http.app import create_app
    from saltbus.http.bridge import Bridge
    from saltbus.http.settings import DEFAULT_HOOK_PREFIX, SALT_HOOK_PREFIX, Settings
    from saltbus.http.tokens import Grant, TokenStore

__all__ = [
    "DEFAULT_HOOK_PREFIX",
    "SALT_HOOK_PREFIX",
    "Bridge",
    "Grant",
    "Settings",
    "TokenStore",
    "create_app",
]

# Hidden from type checkers, which see the imports above (see saltbus.lazy).
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "saltbus.http.app": ("create_app",),
            "saltbus.http.bridge": ("Bridge",),
            "saltbus.http.settings": ("DEFAULT_HOOK_PREFIX", "SALT_HOOK_PREFIX", "Settings"),
            "saltbus.http.tokens": ("Grant", "TokenStore"),
        },
    )
