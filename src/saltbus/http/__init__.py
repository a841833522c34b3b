"""The HTTP bridge: the bus as Server-Sent Events, a WebSocket, webhooks and a
live page, in one ASGI app on Starlette."""

from __future__ import annotations

from saltbus.http.settings import DEFAULT_HOOK_PREFIX, SALT_HOOK_PREFIX, Settings
from saltbus.http.tokens import Grant, TokenStore

__all__ = ["DEFAULT_HOOK_PREFIX", "SALT_HOOK_PREFIX", "Grant", "Settings", "TokenStore"]
