"""saltbus.reactor.missing_store: a reactor's open jobs in a table of the bus
journal's SQLite file, written whole or not at all with the seq they reflect,
per reactor name, beside a journal the publisher keeps using."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltbus.errors import JournalError
from saltbus.journal import Journal
from saltbus.journal.records import JournalRecord
from saltbus.reactor.missing import OpenJob
from saltbus.reactor.missing_store import OpenJobStore
from saltbus.wire import pack_body


def job(jid: str, *waiting: str, deadline: float = 100.0) -> OpenJob:
    return OpenJob(jid, "test.ping", "*", "glob", "root", ("a", "b", "c"), set(waiting), deadline)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "bus.journal"
    Journal.open(path).close()
    return path


def test_saves_and_loads_with_the_seq_and_epoch(journal: Path) -> None:
    with OpenJobStore(journal, "reactor") as store:
        assert store.load() == (None, None, [])
        store.save([job("1", "a").to_dict(), job("2", "b", deadline=50.0).to_dict()], [], 7, 10)
        store.save([job("1", "a", "c").to_dict()], ["2"], 7, 12)
    with OpenJobStore(journal, "reactor") as store:
        epoch, seq, jobs = store.load()
    assert (epoch, seq) == (7, 12)
    assert jobs == [job("1", "a", "c")]


def test_reactors_keep_their_own_and_clear_forgets_one(journal: Path) -> None:
    with OpenJobStore(journal, "one") as one, OpenJobStore(journal, "two") as two:
        one.save([job("1", "a").to_dict()], [], None, 3)
        two.save([job("2", "b").to_dict()], [], None, 4)
        one.clear()
        assert one.load() == (None, None, [])
        assert two.load() == (None, 4, [job("2", "b")])


def test_the_publisher_keeps_writing_beside_it(journal: Path) -> None:
    with Journal.open(journal) as writer, OpenJobStore(journal, "reactor") as store:
        writer.append([JournalRecord.from_body(1, 1.0, pack_body("a", {}))])
        store.save([job("1", "a").to_dict()], [], writer.epoch(), 1)
        writer.append([JournalRecord.from_body(2, 2.0, pack_body("b", {}))])
        assert writer.last_seq() == 2
        assert store.load()[1] == 1


def test_no_journal_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.journal"
    with pytest.raises(JournalError, match=f"cannot keep open jobs in journal {missing}"):
        OpenJobStore(missing, "reactor")
    assert not missing.exists()
