"""The syslog returner against a real rsyslogd: RFC 5424 with the tag and seq
as structured data over TCP and UDP, and 10,000 events through a `saltbus
serve` killed in the middle (at least once; every event there, in order)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config
from saltbus.client.admin import fetch_stats
from saltbus.errors import ConfigError
from saltbus.returners.syslog import SyslogReturner
from tests.returners_support import write_config
from tests.serve_support import ServeProcess
from tests.sinks_support import WAIT, Fired, Rsyslog, rsyslog_server
from tests.waiting import wait_until

LINE = re.compile(r'(\S+) \[saltbus@32473 tag="([^"]*)" seq="(\d+)" master_id="([^"]*)"\] (.*)')


@pytest.fixture(scope="module")
def server() -> Iterator[Rsyslog]:
    with rsyslog_server() as running:
        yield running


def received(server: Rsyslog) -> list[tuple[str, str, int, str, dict[str, Any]]]:
    if not server.out.exists():
        return []
    got = []
    for line in server.out.read_text().splitlines():
        match = LINE.fullmatch(line)
        if match:
            msgid, tag, seq, master, data = match.groups()
            got.append((msgid, tag, int(seq), master, json.loads(data)))
    return got


def event(seq: int, tag: str) -> dict[str, Any]:
    return {"tag": tag, "data": {"n": seq}, "seq": seq, "time": 1700000000.25}


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_messages_carry_tag_and_seq(server: Rsyslog, transport: str):
    port = server.port if transport == "tcp" else server.udp_port
    tag = f"salt/{transport}/x"
    ret = SyslogReturner(
        {"transport": transport, "port": port, "master_id": "m1", "facility": "local3"}
    )
    try:
        ret.event_return([event(1, tag), event(2, tag)])
    finally:
        ret.close()
    wait_until(lambda: len([r for r in received(server) if r[1] == tag]) == 2, "messages", WAIT)
    mine = [r for r in received(server) if r[1] == tag]
    assert mine == [("salt", tag, 1, "m1", {"n": 1}), ("salt", tag, 2, "m1", {"n": 2})]


def test_the_message_format():
    ret = SyslogReturner(
        {"hostname": "h 1", "facility": 16, "severity": "warning", "master_id": "m"}
    )
    message = ret.format(event(5, 'a/b"c'))
    assert message == (
        b'<132>1 2023-11-14T22:13:20.250000Z h_1 saltbus - a [saltbus@32473 tag="a/b\\"c" '
        b'seq="5" master_id="m"] {"n":5}'
    )


def test_unix_socket(tmp_path: Path):
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        ret = SyslogReturner({"socket": str(path)})
        try:
            ret.event_return([event(9, "x/y")])
        finally:
            ret.close()
        assert b'seq="9"' in listener.recv(65536)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, "unknown options"),
        ({"transport": "carrier-pigeon"}, "transport must be"),
        ({"facility": "nope"}, "facility must be one of"),
        ({"severity": 9}, "severity must be one of"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        SyslogReturner(options)


def test_ten_thousand_events_through_a_killed_serve(
    server: Rsyslog, bus_config: Config, tmp_path: Path
):
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": "bus-syslog",
            "event_return": "syslog",
            "event_return_queue": 200,
            "event_return_queue_max_seconds": 0.1,
            "returner_options": {"syslog": {"transport": "tcp", "port": server.port}},
        },
    )
    fired = Fired(bus_config)

    def mine() -> list[int]:
        return [r[2] for r in received(server) if r[3] == "bus-syslog"]

    serve = ServeProcess(bus_config, "--config", str(config_file))
    try:
        fired.fire(5000)
        wait_until(lambda: len(mine()) > 0, "the first messages", WAIT)
        serve.kill()
    finally:
        serve.close()
    with ServeProcess(bus_config, "--config", str(config_file)):
        fired.fire(5000)
        wait_until(lambda: fired.last_seq in mine(), "the last event", WAIT)
        assert fetch_stats(bus_config)["returners"][0]["lag"] == 0
    seqs = mine()
    firsts = list(dict.fromkeys(seqs))
    assert len(firsts) == 10_000 and firsts == sorted(firsts), "an event is missing or reordered"
    ns = [r[4]["n"] for r in received(server) if r[3] == "bus-syslog"]
    assert list(dict.fromkeys(ns)) == list(range(1, 10_001))
    print(f"duplicates after the kill: {len(seqs) - len(firsts)}")  # at least once
