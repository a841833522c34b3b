"""Named listener positions (saltbus.client.positions) on a full disk: a save
that cannot be written is logged once and reported, never raised (it stopped
`saltbus listen --resume` and `saltbus react` with a traceback in the soak),
and the next save after space came back keeps the position again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from saltbus.client.positions import PositionStore
from tests.disk_support import fill, small_disk


def test_a_full_disk_fails_a_save_without_raising_and_a_later_save_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(tmp_path, 1) as disk:
        store = PositionStore(disk / "bus.journal", "dash")
        assert store.save(7, 100)
        filler = fill(disk, 0)
        with caplog.at_level(logging.INFO, logger="saltbus.client"):
            assert not store.save(7, 101)
            assert not store.save(7, 102)
            assert store.load() == (7, 100)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert str(store.path) in warnings[0].getMessage()
            filler.unlink()
            assert store.save(7, 103)
        assert store.load() == (7, 103)
        assert "position saved again" in caplog.text
