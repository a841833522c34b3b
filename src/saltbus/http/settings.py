"""The settings of an HTTP bridge, importable without Starlette (the CLI reads
the defaults to print its help)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

SALT_HOOK_PREFIX: Final = "salt/netapi/hook"
DEFAULT_HOOK_PREFIX: Final = "saltbus/hook"


@dataclass(frozen=True)
class Settings:
    """How a bridge behaves; every field has a working default."""

    hook_prefix: str = DEFAULT_HOOK_PREFIX
    # Per hook path (an fnmatch pattern of the path after /hook/): the secret of
    # a GitHub-style X-Hub-Signature-256 HMAC that requests must carry.
    hook_secrets: Mapping[str, str] = field(default_factory=dict)
    heartbeat: float = 15.0  # seconds between SSE comments on an idle stream
    queue_size: int = 10_000  # events a connection may have waiting before it lags
    batch: int = 500  # events written at once to a connection that has many waiting
    fanout_pending: int = 100_000  # events the shared client may hold for the fan-out
    # Seconds a fire (POST /events, a hook, the WebSocket) may wait for the
    # publisher to take, and acknowledge, an event before the answer is an error.
    fire_timeout: float = 5.0
