"""?backlog=N: the resume point before the last N events a stream may see,
found in a real journal (the streams that use it are tested in test_http_sse
and test_http_ws)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.event import MatchType
from saltbus.http.backlog import MAX_BACKLOG, backlog_start, journal_file, parse_backlog
from saltbus.journal import Journal, JournalRecord
from saltbus.journal.paths import journal_path
from saltbus.wire import pack_body


def _journal(path: Path, tags: list[str], first: int = 1) -> list[int]:
    """A journal with one event per tag, numbered from ``first``; their seqs."""
    seqs = list(range(first, first + len(tags)))
    with Journal.open(path) as journal:
        journal.append(
            [
                JournalRecord(seq, float(seq), tag, pack_body(tag, {"n": seq}))
                for seq, tag in zip(seqs, tags, strict=True)
            ]
        )
    return seqs


def _everything(tag: str) -> bool:
    return True


def test_the_last_n_events(tmp_path: Path):
    path = tmp_path / "j.sqlite3"
    seqs = _journal(path, [f"app/{n}" for n in range(50)])
    assert backlog_start(path, 5, _everything) == seqs[-5] - 1
    assert backlog_start(path, 1, _everything) == seqs[-1] - 1
    # Fewer events than asked: all of them.
    assert backlog_start(path, 500, _everything) == 0
    assert backlog_start(path, 0, _everything) is None


def test_only_events_the_filter_and_the_token_let_through_count(tmp_path: Path):
    path = tmp_path / "j.sqlite3"
    tags = []
    for n in range(40):
        tags += [f"app/web/{n}", f"salt/job/{n}", f"app/secret/{n}"]
    seqs = _journal(path, tags)
    allowed = dict(zip(tags, seqs, strict=True))

    def may_read(tag: str) -> bool:
        return not tag.startswith("app/secret/")

    # The last 3 app/ events this token may read: app/web/37..39.
    assert backlog_start(path, 3, may_read, tag="app/") == allowed["app/web/37"] - 1
    fnmatch = backlog_start(path, 2, may_read, tag="salt/job/*", match_type=MatchType.FNMATCH)
    assert fnmatch == allowed["salt/job/38"] - 1
    assert backlog_start(path, 3, may_read, tag="nothing/") is None


def test_chunks_and_the_reach(tmp_path: Path):
    path = tmp_path / "j.sqlite3"
    # A rare tag far back, then many others; numbering need not start at 1.
    seqs = _journal(path, ["rare/a", *["noise"] * 30, "rare/b", *["noise"] * 30], first=1000)
    rare_a, rare_b = seqs[0], seqs[31]
    # Found across chunk boundaries (7 seqs per read).
    assert backlog_start(path, 2, _everything, tag="rare/", chunk=7) == rare_a - 1
    # Not further back than the reach: only rare/b is that recent.
    assert backlog_start(path, 2, _everything, tag="rare/", reach=40, chunk=7) == rare_b - 1
    assert backlog_start(path, 2, _everything, tag="rare/", reach=10) is None


def test_no_journal_to_read_means_live(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="saltbus.http"):
        assert backlog_start(tmp_path / "missing.sqlite3", 5, _everything) is None
    assert "cannot read the journal" in caplog.text


def test_the_journal_is_the_one_history_reads(bus_config: Config):
    assert bus_config.data_dir is not None
    expected = journal_path(bus_config.data_dir, bus_config.sock_dir, bus_config.socket_prefix)
    assert journal_file(bus_config) == expected


def test_parse_backlog():
    assert parse_backlog(None) is None
    assert parse_backlog("") is None
    assert parse_backlog("25") == 25
    assert parse_backlog(str(MAX_BACKLOG)) == MAX_BACKLOG
    for bad in ("-1", "x", "1.5", str(MAX_BACKLOG + 1)):
        with pytest.raises(ConfigError, match="backlog must be"):
            parse_backlog(bad)
