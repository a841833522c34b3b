"""Named listener positions for ``saltbus listen --resume NAME``.

A position is the publisher's epoch and the last sequence number a listener
printed, kept in a small file per name next to the bus's journal, so a
listener killed and started again with the same name continues where it
stopped. Each save replaces the file atomically. A save that fails (the
disk is full) is logged and the next one tries again: a position kept late
costs duplicates after a restart, a listener stopped by it loses the stream.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from saltbus.errors import ConfigError

log = logging.getLogger("saltbus.client")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class PositionStore:
    def __init__(self, journal: Path, name: str) -> None:
        if not _NAME.match(name) or name in {".", ".."}:
            raise ConfigError(
                f"resume name {name!r} must be 1-100 letters, digits, '.', '_' or '-'"
            )
        self.path = journal.with_suffix(".positions") / name
        self._tmp = self.path.with_name(f".{name}.tmp")
        self.failing: str | None = None  # why the last save failed

    def load(self) -> tuple[int | None, int] | None:
        """(epoch, seq) saved under this name, or None."""
        try:
            epoch_text, seq_text = self.path.read_text().split()
            epoch = None if epoch_text == "-" else int(epoch_text)
            return epoch, int(seq_text)
        except FileNotFoundError:
            return None
        except ValueError:
            raise ConfigError(f"position file {self.path} is corrupt; remove it") from None

    def save(self, epoch: int | None, seq: int) -> bool:
        """Keep (epoch, seq); False (logged once until a save succeeds) when it cannot."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._tmp.write_text(f"{'-' if epoch is None else epoch} {seq}\n")
            os.replace(self._tmp, self.path)
        except OSError as exc:
            if self.failing is None:
                log.warning(
                    "cannot save the position in %s (%s); going on, a restart now would "
                    "repeat events since the last saved one",
                    self.path,
                    exc.strerror or exc,
                )
            self.failing = str(exc)
            return False
        if self.failing is not None:
            log.info("position saved again in %s", self.path)
            self.failing = None
        return True
