"""The syslog returner against a real rsyslogd: RFC 5424 with the tag and seq
as structured data over TCP, UDP and the local socket; 10,000 events through
a `saltbus serve` killed in the middle, and through one whose rsyslogd is
stopped in the middle and started again (TCP and the local socket: at least
once, every event there, in order; UDP: what was sent while it was down is
lost, the rest is there)."""

from __future__ import annotations

import json
import re
import socket
import threading
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
from tests.sinks_support import WAIT, Fired, Rsyslog, gaps, rsyslog_server
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
            try:
                got.append((msgid, tag, int(seq), master, json.loads(data)))
            except ValueError:
                continue  # a frame cut short when rsyslogd was stopped: not delivered
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


@pytest.mark.parametrize("read_first", [True, False], ids=["closed", "reset-unread"])
def test_a_closed_connection_is_noticed_and_what_was_written_last_resent(read_first: bool):
    # The receiver goes away after a batch was written (having read it, or
    # not): the write had succeeded, so only the next batch can tell.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        ret = SyslogReturner({"transport": "tcp", "port": listener.getsockname()[1]})
        try:
            ret.event_return([event(1, "a/b"), event(2, "a/b")])
            first, _ = listener.accept()
            with first:
                if read_first:  # all taken: the close is a FIN
                    first.settimeout(WAIT)
                    taken = b""
                    while b'seq="2"' not in taken:
                        chunk = first.recv(65536)
                        assert chunk, "the returner closed the connection"
                        taken += chunk
            got: list[bytes] = []
            accepted = threading.Thread(target=lambda: got.append(_read_all(listener)))
            accepted.start()
            # The close (FIN, or RST for unread bytes) may take a moment to arrive.
            sock = ret._sock
            assert sock is not None
            wait_until(lambda: not ret._alive(sock), "the close seen", WAIT)
            ret.event_return([event(3, "a/b")])
            ret.close()
            accepted.join(WAIT)
        finally:
            ret.close()
    assert [int(n) for n in re.findall(rb'seq="(\d+)"', got[0])] == [1, 2, 3]
    assert ret.stats() == {"reconnects": 1, "resent": 2}


def _read_all(listener: socket.socket) -> bytes:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(WAIT)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _serve_config(server: Rsyslog, bus_config: Config, tmp_path: Path, transport: str) -> Path:
    where = {"tcp": {"port": server.port}, "udp": {"port": server.udp_port}}
    return write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "id": f"bus-syslog-{transport}",
            "event_return": "syslog",
            "event_return_queue": 200,
            "event_return_queue_max_seconds": 0.1,
            "event_return_retry_max_seconds": 0.5,
            "returner_options": {
                "syslog": {
                    "transport": transport,
                    **where.get(transport, {"socket": str(server.socket)}),
                }
            },
        },
    )


def _seqs(server: Rsyslog, master_id: str) -> list[int]:
    return [r[2] for r in received(server) if r[3] == master_id]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_ten_thousand_events_through_an_rsyslog_restart(
    server: Rsyslog, bus_config: Config, tmp_path: Path, transport: str
):
    config_file = _serve_config(server, bus_config, tmp_path, transport)
    master_id = f"bus-syslog-{transport}"
    fired = Fired(bus_config)
    with ServeProcess(bus_config, "--config", str(config_file)):
        fired.fire(4000)
        wait_until(lambda: len(_seqs(server, master_id)) > 1000, "the first messages", WAIT)
        server.stop()  # by pid, maybe in the middle of a batch
        try:
            fired.fire(3000)  # the bus goes on while rsyslog is down
            wait_until(
                lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 1, "failures", WAIT
            )
        finally:
            server.start()
        fired.fire(3000)
        wait_until(lambda: fired.last_seq in _seqs(server, master_id), "the last event", WAIT)
        (stats,) = fetch_stats(bus_config)["returners"]
        assert stats["lag"] == 0
        assert stats["details"]["reconnects"] >= 1 and stats["details"]["resent"] > 0
    seqs = _seqs(server, master_id)
    firsts = list(dict.fromkeys(seqs))
    assert len(firsts) == 10_000 and firsts == sorted(firsts), gaps(firsts)
    ns = [r[4]["n"] for r in received(server) if r[3] == master_id]
    assert list(dict.fromkeys(ns)) == list(range(1, 10_001))
    print(  # at least once: what was written again after the restart
        f"{transport}: {len(seqs) - len(firsts)} duplicates, "
        f"{stats['details']['resent']} messages written again"
    )


def test_udp_loses_what_is_sent_while_rsyslog_is_down(
    server: Rsyslog, bus_config: Config, tmp_path: Path
):
    config_file = _serve_config(server, bus_config, tmp_path, "udp")
    fired = Fired(bus_config)

    def got() -> list[int]:
        return [r[4]["n"] for r in received(server) if r[3] == "bus-syslog-udp"]

    def returned_all() -> bool:
        (stats,) = fetch_stats(bus_config)["returners"]
        return bool(stats["cursor"] == fired.last_seq)

    with ServeProcess(bus_config, "--config", str(config_file)):
        fired.fire(300)
        wait_until(lambda: len(got()) == 300, "the events before the stop", WAIT)
        server.stop()
        try:
            fired.fire(300)
            wait_until(returned_all, "the events sent while rsyslog is down", WAIT)
            (stats,) = fetch_stats(bus_config)["returners"]
            assert stats["failures"] == 0  # nothing tells a datagram's sender
        finally:
            server.start()
        _wait_for_udp(server)
        fired.fire(300)
        wait_until(lambda: 900 in got(), "the events after the restart", WAIT)
    assert got() == [*range(1, 301), *range(601, 901)]


def _wait_for_udp(server: Rsyslog) -> None:
    """rsyslogd listens on UDP too (its TCP port is what start() waited for)."""
    probe = SyslogReturner({"transport": "udp", "port": server.udp_port, "master_id": "probe"})
    try:

        def seen() -> bool:
            probe.event_return([event(1, "probe/udp")])
            return any(r[3] == "probe" for r in received(server))

        wait_until(seen, "rsyslogd on UDP", WAIT)
    finally:
        probe.close()
