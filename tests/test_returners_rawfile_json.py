"""The rawfile_json returner: JSON lines, rotation by size and age, gzip,
logrotate, and every event exactly once across a killed `saltbus serve`."""

from __future__ import annotations

import gzip
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config, Sender
from saltbus.client.admin import fetch_stats
from saltbus.config import Config as ConfigClass
from saltbus.errors import ConfigError
from saltbus.returners.rawfile_json import RawfileJsonReturner
from tests.returners_support import WAIT, write_config
from tests.serve_support import ServeProcess
from tests.waiting import wait_until


def event(seq: int, **data: Any) -> dict[str, Any]:
    return {"tag": "app/evt", "data": {"n": seq, **data}, "seq": seq, "time": 1700000000.0 + seq}


def read_all(path: Path) -> list[dict[str, Any]]:
    """Every line of the file and its rotated files, oldest first."""
    prefix = path.name + "."
    rotated = sorted(
        (
            p
            for p in path.parent.glob(prefix + "*")
            if p.name[len(prefix) :].split(".")[0].isdigit()
        ),
        key=lambda p: int(p.name[len(prefix) :].split(".")[0]),
    )
    out: list[dict[str, Any]] = []
    for part in [*rotated, path]:
        if not part.exists():
            continue
        raw = gzip.decompress(part.read_bytes()) if part.suffix == ".gz" else part.read_bytes()
        out.extend(json.loads(line) for line in raw.decode().splitlines() if line.endswith("}"))
    return out


def test_lines_rotation_by_size_gzip_and_backup_count(tmp_path: Path):
    path = tmp_path / "log" / "events"
    ret = RawfileJsonReturner(
        {"filename": str(path), "max_bytes": 300, "compress": True, "backup_count": 3}
    )
    try:
        for seq in range(1, 41):
            ret.event_return([event(seq)])
    finally:
        ret.close()
    rotated = sorted(p.name for p in path.parent.iterdir() if p != path)
    assert len(rotated) == 3 and all(name.endswith(".gz") for name in rotated)
    got = read_all(path)
    assert [e["seq"] for e in got] == list(range(41 - len(got), 41))
    assert got[-1] == {"tag": "app/evt", "data": {"n": 40}, "seq": 40, "time": 1700000040.0}
    assert ret.rotations > 3


def test_rotation_by_age(tmp_path: Path):
    path = tmp_path / "events"
    ret = RawfileJsonReturner({"filename": str(path), "rotate_seconds": 0.2})
    try:
        ret.event_return([event(1), event(2)])
        ret.event_return([event(3)])
        assert not list(tmp_path.glob("events.*"))
        time.sleep(0.3)
        ret.event_return([event(4)])
    finally:
        ret.close()
    assert [json.loads(x)["seq"] for x in (tmp_path / "events.3").read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    assert [e["seq"] for e in read_all(path)] == [1, 2, 3, 4]


def test_a_retried_batch_and_a_cut_line_are_written_once(tmp_path: Path):
    path = tmp_path / "events"
    first = RawfileJsonReturner({"filename": str(path)})
    first.event_return([event(1), event(2), event(3)])
    first.close()
    with open(path, "ab") as out:
        out.write(b'{"tag":"app/evt","data":{"n":4},"se')  # killed in the middle of a write
    again = RawfileJsonReturner({"filename": str(path)})
    try:
        again.event_return([event(2), event(3), event(4), event(5)])  # the cursor was behind
    finally:
        again.close()
    assert [e["seq"] for e in read_all(path)] == [1, 2, 3, 4, 5]
    assert again.skipped == 2


def test_reopens_after_logrotate_moved_the_file(tmp_path: Path):
    path = tmp_path / "events"
    ret = RawfileJsonReturner({"filename": str(path)})
    try:
        ret.event_return([event(1)])
        path.rename(tmp_path / "moved-by-logrotate")
        ret.event_return([event(2)])
        ret.reopen()  # what SIGHUP asks for
        ret.event_return([event(3)])
    finally:
        ret.close()
    assert [e["seq"] for e in read_all(tmp_path / "moved-by-logrotate")] == [1]
    assert [e["seq"] for e in read_all(path)] == [2, 3]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"filename": "x", "colour": 1}, "unknown options"),
        ({"max_bytes": "big"}, "max_bytes must be a number"),
        ({"rotate_seconds": -1}, "rotate_seconds must be 0 or more"),
        ({"compress": "maybe"}, "compress must be true or false"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        RawfileJsonReturner(options)


def test_salts_flat_filename_key(tmp_path: Path):
    config_file = write_config(
        tmp_path / "master",
        {"event_return": "rawfile_json", "rawfile_json.filename": str(tmp_path / "ev")},
    )
    config = ConfigClass.load(config_file, env={})
    assert config.returner_options == {"rawfile_json": {"filename": str(tmp_path / "ev")}}


def test_ten_thousand_events_through_a_killed_serve_exactly_once(
    bus_config: Config, tmp_path: Path
):
    path = tmp_path / "out" / "events"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "event_return": "rawfile_json",
            "event_return_queue": 100,
            "event_return_queue_max_seconds": 0.1,
            "rawfile_json.filename": str(path),
            "returner_options": {
                "rawfile_json": {"max_bytes": 100_000, "compress": True, "rotate_seconds": 3600}
            },
        },
    )
    fired: list[int] = []

    def fire(count: int) -> None:
        with Sender(bus_config) as sender:
            for _ in range(count - 1):
                sender.fire("app/evt", {"n": len(fired) + 1}, timeout=5)
                fired.append(0)
            last = sender.fire("app/evt", {"n": len(fired) + 1}, timeout=5, ack=True).seq
            assert last is not None
            fired.append(last)

    serve = ServeProcess(bus_config, "--config", str(config_file))
    try:
        fire(5000)
        wait_until(lambda: path.exists() and path.stat().st_size > 0, "the first lines", WAIT)
        serve.kill()  # SIGKILL, maybe in the middle of a batch
    finally:
        serve.close()
    with ServeProcess(bus_config, "--config", str(config_file)):
        fire(5000)
        wait_until(lambda: len(read_all(path)) >= 10_000, "every event in the files", WAIT)
        (stats,) = fetch_stats(bus_config)["returners"]
        assert stats["lag"] == 0 and stats["failures"] == 0
    got = read_all(path)
    assert [e["data"]["n"] for e in got] == list(range(1, 10_001)), "lost, twice or reordered"
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(set(seqs)) and seqs[-1] == fired[-1]
    assert len(list(path.parent.glob("events.*.gz"))) > 5


def test_sighup_reopens_under_serve(bus_config: Config, tmp_path: Path):
    path = tmp_path / "events"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "event_return": "rawfile_json",
            "rawfile_json.filename": str(path),
        },
    )
    with ServeProcess(bus_config, "--config", str(config_file)) as serve, Sender(bus_config) as s:
        s.fire("app/evt", {"n": 1}, timeout=5, ack=True)
        wait_until(lambda: len(read_all(path)) == 1, "the first line", WAIT)
        moved = tmp_path / "events.old"
        path.rename(moved)  # logrotate's rename, then its postrotate: kill -HUP
        serve.send_signal(signal.SIGHUP)
        wait_until(
            lambda: fetch_stats(bus_config)["returners"][0]["details"]["reopens"] == 1,
            "the reopen",
            WAIT,
        )
        s.fire("app/evt", {"n": 2}, timeout=5, ack=True)
        wait_until(lambda: len(read_all(path)) == 1, "a line in the new file", WAIT)
        assert serve.alive()
    assert [e["data"]["n"] for e in read_all(moved)] == [1]
    assert [e["data"]["n"] for e in read_all(path)] == [2]
