"""`saltbus serve` refusing to start: one line on stderr naming the path and
what to do, never a traceback, and a non-zero exit.

The tests run as root here, for whom a directory's mode is no obstacle: a
directory that cannot be written is a read-only tmpfs mounted by the test
(or, for another user, a directory of mode 0500).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.journal.paths import journal_path
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.journal.tail import encode, tail_path
from tests.serve_support import SALTBUS, clean_env


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(SALTBUS), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start printed."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saltbus: error: "), lines[0]
    return lines[0]


@pytest.fixture
def unwritable(sock_dir: Path) -> Iterator[Path]:
    """A directory this process cannot create anything in."""
    path = sock_dir / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_unwritable_data_dir(sock_dir: Path, unwritable: Path) -> None:
    line = refusal(serve("--sock-dir", str(sock_dir / "bus"), "--data-dir", str(unwritable)))
    assert str(unwritable) in line and "--data-dir" in line, line
    assert ".new-" not in line  # the journal's own name, not a temporary one


def test_data_dir_under_an_unwritable_directory(sock_dir: Path, unwritable: Path) -> None:
    data = unwritable / "data"
    line = refusal(serve("--sock-dir", str(sock_dir / "bus"), "--data-dir", str(data)))
    assert str(data) in line and "--data-dir" in line, line


def test_data_dir_that_is_a_file(sock_dir: Path) -> None:
    data = sock_dir / "data"
    data.write_text("")
    line = refusal(serve("--sock-dir", str(sock_dir / "bus"), "--data-dir", str(data)))
    assert str(data) in line and "not a directory" in line, line


def test_sock_dir_that_is_a_file(sock_dir: Path) -> None:
    path = sock_dir / "bus"
    path.write_text("")
    line = refusal(serve("--sock-dir", str(path), "--data-dir", str(sock_dir / "data")))
    assert f"sock_dir {path} is a file" in line and "--sock-dir" in line, line
    assert "File exists" not in line


def test_sock_dir_where_the_lock_cannot_be_written(sock_dir: Path, unwritable: Path) -> None:
    line = refusal(serve("--sock-dir", str(unwritable), "--data-dir", str(sock_dir / "data")))
    assert str(unwritable) in line and "lock" in line and "--sock-dir" in line, line


def test_lock_file_that_cannot_be_opened(sock_dir: Path) -> None:
    bus = sock_dir / "bus"
    lock = bus / ".master_event.saltbus.lock"
    lock.mkdir(parents=True)  # a directory where the lock file goes
    line = refusal(serve("--sock-dir", str(bus), "--data-dir", str(sock_dir / "data")))
    assert str(lock) in line, line


def test_sock_dir_under_an_unwritable_directory(sock_dir: Path, unwritable: Path) -> None:
    bus = unwritable / "bus"
    line = refusal(serve("--sock-dir", str(bus), "--data-dir", str(sock_dir / "data")))
    assert f"cannot create sock_dir {bus}" in line, line


def test_a_journal_tail_damaged_before_its_end(sock_dir: Path) -> None:
    bus, data = sock_dir / "bus", sock_dir / "data"
    config = Config.load(env={}, overrides={"sock_dir": bus, "data_dir": data})
    path = journal_path(data, config.sock_dir, config.socket_prefix)
    with Journal.open(path):
        pass
    frames = bytearray(encode([JournalRecord(n, 0.0, "a", b"a\n\n\x80") for n in (1, 2, 3)]))
    frames[len(frames) // 2] ^= 0xFF  # inside the second of three frames
    tail_path(path).write_bytes(bytes(frames))
    line = refusal(serve("--sock-dir", str(bus), "--data-dir", str(data)))
    assert f"{tail_path(path)} is damaged at byte" in line, line
    # The command that salvages what is readable, for this very bus.
    assert f"saltbus journal recover --sock-dir {bus} --data-dir {data}" in line, line
