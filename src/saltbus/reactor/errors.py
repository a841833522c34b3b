"""What the reactor raises: configuration errors that name a file and line,
and the failures of actions (which become error ``ret`` events)."""

from __future__ import annotations

from pathlib import Path

from saltbus.errors import ConfigError, SaltbusError


class ReactionFileError(ConfigError):
    """A reaction file cannot be read, rendered or understood.

    ``line`` is 1-based, or None when the problem is not on one line (a
    missing file). The message starts with ``path:line:`` as compilers do,
    so editors and ``grep`` can jump to it.
    """

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line
        self.reason = message


class ActionError(SaltbusError):
    """An action ran and failed, or could not be run; the message is the
    ``error`` of the reaction's ret event."""


class SaltUnreachableError(ActionError):
    """Salt's reactions cannot reach Salt: no Salt found, its config not
    loadable, its helper gone, or the master not answering."""
