"""The journal's tail file (saltbus.journal.tail): its frames, a write cut
short, damage, and a real ``saltbus serve`` killed with SIGKILL while events
are fired: every acknowledged event is in ``history`` once, and every
delivered one too, after the next start."""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from saltbus.client import Listener, Sender
from saltbus.config import Config
from saltbus.errors import JournalError, SaltbusError
from saltbus.event import Event
from saltbus.journal.paths import journal_path
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.journal.tail import (
    CAPACITY,
    HEADER_SIZE,
    MAGIC,
    SHRINK_ABOVE,
    TailDamagedError,
    TailLog,
    decode,
    encode,
    tail_path,
)
from saltbus.wire import unpack_body
from tests.serve_support import ServeProcess, bus_flags


def records(first: int, count: int, tag: str = "app/evt") -> list[JournalRecord]:
    return [
        JournalRecord(seq, 1_700_000_000.0 + seq, tag, b"%s\n\n\x81\xa1n%c" % (tag.encode(), seq))
        for seq in range(first, first + count)
    ]


def test_frames_come_back_as_they_went_in(tmp_path: Path) -> None:
    written = [
        *records(1, 3),
        JournalRecord(4, 1.5, "salt/job/ü/ret", b"salt/job/\xc3\xbc/ret\n\n\x80"),
        JournalRecord(9, 2.0, "", b""),  # seqs may skip, an empty body is kept
    ]
    decoded = decode(encode(written), tmp_path / "t")
    assert decoded.records == written
    assert decoded.end == len(encode(written))


def test_a_tag_the_journal_could_not_store_is_refused() -> None:
    with pytest.raises(JournalError, match="seq 3"):
        encode([JournalRecord(3, 0.0, "bad\udcff", b"x")])


def with_header(frames: bytes) -> bytes:
    return MAGIC + (HEADER_SIZE + len(frames)).to_bytes(8, "little") + frames


def test_an_append_not_published_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    tail, _ = TailLog.open(path)
    tail.append(records(1, 2))
    tail.close()
    # A kill after the frames were copied and before the end moved.
    published = path.read_bytes()
    path.write_bytes(published + encode(records(3, 2)) + b"\0" * 100)
    decoded = decode(path.read_bytes(), path)
    assert [r.seq for r in decoded.records] == [1, 2] and decoded.torn == 0
    again, found = TailLog.open(path)
    assert [r.seq for r in found] == [1, 2]
    again.append(records(3, 1))  # over the bytes never published
    again.close()
    assert [r.seq for r in decode(path.read_bytes(), path).records] == [1, 2, 3]


def test_a_legacy_frame_cut_short_is_dropped_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A tail written by write() before the header: a kill in the middle of one.
    path = tmp_path / "j.tail"
    whole = encode(records(1, 5))
    last = encode(records(6, 1))
    for cut in (3, 9, len(last) - 1):  # in the header, just after it, in the body
        path.write_bytes(whole + last[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            tail, found = TailLog.open(path)
        tail.close()
        assert [r.seq for r in found] == [1, 2, 3, 4, 5]
        rewritten = path.read_bytes()
        assert rewritten.startswith(with_header(whole)), "rewritten with the header"
        assert [r.seq for r in decode(rewritten, path).records] == [1, 2, 3, 4, 5]
        assert len(caplog.records) == 1 and "cut short" in caplog.records[0].getMessage()


def test_zeros_after_the_last_frame_are_no_damage(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    path.write_bytes(encode(records(1, 2)) + b"\0" * 4096)
    tail, found = TailLog.open(path)
    tail.close()
    assert [r.seq for r in found] == [1, 2]


def test_damage_before_the_end_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    data = bytearray(encode(records(1, 6)))
    frame = len(encode(records(1, 1)))
    data[frame * 2 + 12] ^= 0xFF  # inside the third frame's payload
    path.write_bytes(bytes(data))
    with pytest.raises(TailDamagedError) as caught:
        TailLog.open(path)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        str(path) in message and "after seq 2" in message and "saltbus journal recover" in message
    )
    assert path.read_bytes() == bytes(data), "a damaged tail is left as it is"


@pytest.mark.parametrize(
    ("damage", "where"),
    [
        (lambda data: data.__setitem__(HEADER_SIZE + 100, data[HEADER_SIZE + 100] ^ 0xFF), "seq"),
        (lambda data: data.__setitem__(slice(8, 16), (1 << 40).to_bytes(8, "little")), "start"),
        (lambda data: data.__setitem__(slice(8, 16), (3).to_bytes(8, "little")), "start"),
    ],
    ids=["a published frame", "an end past the file", "an end inside the header"],
)
def test_damage_in_a_tail_with_the_header_is_refused(
    tmp_path: Path, damage: Callable[[bytearray], None], where: str
) -> None:
    path = tmp_path / "j.tail"
    tail, _ = TailLog.open(path)
    tail.append(records(1, 6))
    tail.close()
    data = bytearray(path.read_bytes())
    damage(data)
    path.write_bytes(bytes(data))
    with pytest.raises(TailDamagedError, match=where):
        TailLog.open(path)
    assert path.read_bytes() == bytes(data), "a damaged tail is left as it is"


def test_seqs_that_go_back_are_damage(tmp_path: Path) -> None:
    with pytest.raises(TailDamagedError, match="after seq 5"):
        decode(encode([*records(1, 5), *records(3, 1)]), tmp_path / "t")


def test_append_reset_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    tail, found = TailLog.open(path)
    assert found == [] and path.stat().st_mode & 0o777 == 0o600
    tail.append(records(1, 2))
    tail.append(records(3, 1))
    assert tail.last_seq == 3 and tail.size == len(encode(records(1, 3)))
    tail.reset()
    tail.append(records(4, 2))
    tail.close()
    again, found = TailLog.open(path)
    assert [r.seq for r in found] == [4, 5]
    again.reset()
    again.close()
    assert path.stat().st_size == 0, "an empty tail keeps no space"


def test_a_batch_past_the_space_allocated_grows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    tail, _ = TailLog.open(path)
    allocated = path.stat().st_size
    big = [JournalRecord(1, 0.0, "big", b"x" * allocated)]
    tail.append(big)
    assert path.stat().st_size > allocated
    tail.append(records(2, 1))
    tail.close()
    again, found = TailLog.open(path)
    again.close()
    assert found == [*big, *records(2, 1)]


def test_a_reset_gives_back_space_past_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    tail, _ = TailLog.open(path)
    tail.append([JournalRecord(1, 0.0, "big", b"x" * SHRINK_ABOVE)])
    assert path.stat().st_size > SHRINK_ABOVE
    tail.reset()
    assert path.stat().st_size == CAPACITY
    tail.append(records(2, 1))
    tail.close()
    again, found = TailLog.open(path)
    again.close()
    assert found == records(2, 1)


def test_a_full_disk_leaves_no_part_of_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "j.tail"
    tail, _ = TailLog.open(path)
    tail.append(records(1, 1))
    size = tail.size
    allocated = path.stat().st_size
    # The file system's limit on this process: the file cannot grow to take it.
    big = [JournalRecord(2, 0.0, "big", b"x" * (1 << 21))]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (allocated + 4096, hard))
    try:
        with pytest.raises(OSError):
            tail.append(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert tail.size == size
    assert [r.seq for r in decode(path.read_bytes(), path).records] == [1]
    tail.append(records(3, 1))
    tail.close()
    again, found = TailLog.open(path)
    again.close()
    assert [r.seq for r in found] == [1, 3]


def test_tail_path_is_beside_the_journal(tmp_path: Path) -> None:
    assert tail_path(tmp_path / "bus-0123.sqlite3") == tmp_path / "bus-0123.sqlite3.tail"


# -- a real daemon, killed ----------------------------------------------------------


def _history(config: Config) -> list[tuple[int, str, bytes]]:
    assert config.data_dir is not None
    path = journal_path(config.data_dir, config.sock_dir, config.socket_prefix)
    with Journal.open(path, readonly=True) as journal:
        return [(r.seq, r.tag, r.body) for r in journal.read(since=0)]


def test_kill_9_while_firing_loses_nothing_acked_or_delivered(
    serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    start = serves
    config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": sock_dir})
    daemon = start(config, *bus_flags(config))
    delivered: list[Event] = []
    listening = threading.Event()

    def listen() -> None:
        with Listener(config, reconnect=False) as listener:
            listener.connect(timeout=10)
            listening.set()
            try:
                while (event := listener.receive(timeout=5)) is not None:
                    delivered.append(event)
            except SaltbusError:
                return  # the daemon is gone

    reader = threading.Thread(target=listen)
    reader.start()
    assert listening.wait(10)
    acked: dict[int, int] = {}
    sender = Sender(config)
    try:
        for n in range(1000):
            # Acked fires now and then; a burst of plain ones at the end, so
            # that the kill likely finds some in the tail and not in SQLite.
            if n % 10 == 0 and n < 400:
                acked[n] = sender.fire("test/kill", {"n": n}, timeout=5, ack=True).seq or 0
            else:
                sender.fire("test/kill", {"n": n}, timeout=5)
            if (n > 400 and len(delivered) > 700) or n == 999:
                os.kill(daemon.pid, signal.SIGKILL)
                break
    except SaltbusError:
        pass  # fired into a dead daemon: neither delivered nor acked
    finally:
        sender.close()
    daemon.wait()
    reader.join(20)
    assert delivered, "nothing was delivered before the kill"

    # The next start indexes what the tail holds beyond SQLite.
    again = start(config, *bus_flags(config))
    again.stop()
    history = _history(config)
    seqs = [seq for seq, _, _ in history]
    assert seqs == sorted(set(seqs)), "a seq is in history twice"
    by_seq = {seq: body for seq, _, body in history}
    for event in delivered:
        assert event.seq in by_seq, f"delivered seq {event.seq} is not in history"
        assert unpack_body(by_seq[event.seq])[1] == event.data
    for n, seq in acked.items():
        assert unpack_body(by_seq[seq])[1]["n"] == n
    tail = tail_path(journal_path(sock_dir, config.sock_dir, config.socket_prefix))
    assert tail.stat().st_size == 0, "a clean stop leaves the tail empty"
