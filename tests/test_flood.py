"""Connection floods against a live daemon: no leak, the limits hold, and the
well-behaved clients never notice.

A `saltbus serve` process (its descriptors and memory read from /proc) gets
hundreds of connections opened and closed in a loop, on both sockets: some send
whole frames, some close in the middle of one, some never send, some subscribe
and resume from the journal and leave before reading it. Afterwards its socket
descriptors are back to what they were and its memory is bounded. A burst of
connections over ``max_connections`` is refused, each with a Refused frame that
says why, and the bus has room again once they leave. Many connections that
send half a frame and stall are all dropped after ``partial_frame_timeout``,
while connections that send nothing stay. Throughout, a well-behaved Sender
and Listener exchange numbered events and see every one of them, in order.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

import pytest

from saltbus import Config, Listener, Sender
from saltbus.control import Refused, Subscribe, decode_control, encode_control
from saltbus.errors import RemoteProtocolError
from saltbus.event import MatchType
from saltbus.wire import FrameDecoder, Framing, encode_frame, pack_body
from tests.fuzz_support import PROC_STEP, WellBehavedPair, report, serve
from tests.waiting import wait_until

MIB = 2**20
SETTLE = 20.0
ROUNDS = 60
PER_ROUND = 100
RSS_GROWTH = 32 * MIB
# What the allocator may keep on top between two measurements of the same load.
RSS_SLACK = 8 * MIB


def _connect(address: object) -> socket.socket:
    """Connect, waiting while the listening socket's backlog is full (EAGAIN)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    deadline = time.monotonic() + SETTLE
    while True:
        try:
            sock.connect(str(address))
            return sock
        except BlockingIOError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.001)


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the daemon closed it first: allowed
        sock.sendall(data)


def test_hundreds_of_connections_leak_nothing(
    bus_config: Config, request: pytest.FixtureRequest
) -> None:
    frame = encode_frame(pack_body("flood/event", {"pad": "x" * 200}))
    subscribe = encode_control(Subscribe((("flood/", MatchType.STARTSWITH),)), Framing.BARE)
    with serve(bus_config, subscriber_queue_bytes=MIB) as daemon:
        config = daemon.config
        pull, pub = config.pull_address, config.pub_address
        # Each way a client may come and go: (socket, what it sends before closing).
        behaviours: list[tuple[object, bytes]] = [
            (pull, frame * 3),  # whole frames
            (pull, frame + frame[: len(frame) // 2]),  # closes in the middle of a frame
            (pull, b""),  # never sends
            (pub, b""),  # a listener that leaves at once
            (pub, subscribe),  # a saltbus listener with a filter
            (pub, b""),  # resumes from the journal, and leaves during the replay (below)
        ]
        pair = WellBehavedPair(config)
        wait_until(lambda: len(pair.received) >= 50, "the well-behaved pair to start", SETTLE)
        baseline_fds, baseline_sockets, baseline_rss = daemon.fds(), daemon.sockets(), daemon.rss()
        most_sockets, started = 0, time.monotonic()
        rss_by_round = []
        for round_ in range(ROUNDS):
            # Resume 200 events back, as a listener that was away a moment would.
            since = max(0, (pair.listener.last_seq or 0) - 200)
            behaviours[-1] = (pub, encode_control(Subscribe((), since=since), Framing.BARE))
            opened = []
            for i in range(PER_ROUND):
                address, data = behaviours[(i + round_) % len(behaviours)]
                sock = _connect(address)
                _send(sock, data)
                opened.append(sock)
            # From the daemon's side too: every one of them accepted, open at once.
            wait_until(
                lambda: daemon.sockets() >= baseline_sockets + PER_ROUND,
                lambda: (
                    f"{PER_ROUND} connections accepted: {daemon.sockets()} sockets, "
                    f"{baseline_sockets} before"
                ),
                SETTLE,
                0.01,
            )
            most_sockets = max(most_sockets, daemon.sockets())
            for i, sock in enumerate(opened):
                if i % 3 == 0:  # some say goodbye, the others just go
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            rss_by_round.append(daemon.rss())
            assert daemon.alive(), daemon.log[-5000:]
            pair.check()
        flood_time = time.monotonic() - started
        daemon.wait_settled(baseline_fds, baseline_sockets, SETTLE)
        end_fds, end_sockets, end_rss = daemon.fds(), daemon.sockets(), daemon.rss()
        peak_rss = max(*rss_by_round, daemon.peak_rss())
        pair.stop()
        alarms = daemon.alarms()
    first_half, second_half = max(rss_by_round[: ROUNDS // 2]), max(rss_by_round[ROUNDS // 2 :])
    line = (
        f"flood: {ROUNDS * PER_ROUND} connections in {flood_time:.1f} s; sockets "
        f"{baseline_sockets} before, {most_sockets} at most, {end_sockets} after; fds "
        f"{baseline_fds} before, {end_fds} after; RSS {baseline_rss / MIB:.1f} MiB before, "
        f"peak {peak_rss / MIB:.1f} MiB, {end_rss / MIB:.1f} MiB after (first half of the "
        f"rounds at most {first_half / MIB:.1f} MiB, second {second_half / MIB:.1f} MiB); "
        "well-behaved pair: "
        f"{len(pair.received)} of {pair.fired} events, in order"
    )
    report(request, line)
    assert not alarms, "\n".join(alarms[:20])
    assert most_sockets >= baseline_sockets + PER_ROUND, line
    assert peak_rss <= baseline_rss + RSS_GROWTH, line
    assert end_rss <= baseline_rss + RSS_GROWTH, line
    # No leak: the second half of the flood needs no more memory than the first.
    assert second_half <= first_half + RSS_SLACK, line


def _outcome(sock: socket.socket, decoder: FrameDecoder) -> str | None:
    """'refused' (a Refused frame, then EOF), 'closed' (EOF without one), or None."""
    try:
        data = sock.recv(65536)
    except OSError:
        return "closed"
    if not data:
        return "closed"
    try:
        decoder.receive_data(data)
        for frame in decoder:
            if isinstance(decode_control(frame), Refused):
                return "refused"
    except RemoteProtocolError:
        return "closed"
    return None


def _watch(socks: list[socket.socket], until: Callable[[dict[int, str]], bool]) -> dict[int, str]:
    """What happens to each socket, read as it happens, until ``until`` or a deadline."""
    outcomes: dict[int, str] = {}
    decoders = {id(s): FrameDecoder(Framing.BARE) for s in socks}
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + SETTLE
        while not until(outcomes) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                sock = socks[key.data]
                outcome = _outcome(sock, decoders[id(sock)])
                if outcome is not None:
                    outcomes[key.data] = outcome
                    selector.unregister(sock)
    return outcomes


def test_max_connections_under_a_burst(bus_config: Config, request: pytest.FixtureRequest) -> None:
    limit, burst = 50, 300
    with serve(bus_config, max_connections=limit) as daemon:
        config = daemon.config
        pair = WellBehavedPair(config)  # two connections of the limit: a listener, a sender
        wait_until(lambda: len(pair.received) >= 20, "the well-behaved pair to start", SETTLE)
        baseline_fds, baseline_sockets = daemon.fds(), daemon.sockets()
        room = limit - 2
        started = time.monotonic()
        socks = [
            _connect(config.pull_address if i % 2 else config.pub_address) for i in range(burst)
        ]
        # The listeners among those let in get the pair's events; they must not read as refusals.
        outcomes = _watch(socks, lambda seen: len(seen) >= burst - room)
        burst_time = time.monotonic() - started
        refused = sum(1 for o in outcomes.values() if o == "refused")
        let_in = [s for i, s in enumerate(socks) if i not in outcomes]
        pair.check()
        for sock in socks:
            sock.close()
        daemon.wait_settled(baseline_fds, baseline_sockets, SETTLE)
        with Listener(config, reconnect=False) as again:  # room again once they left
            assert again.connected
        pair.stop()
        log = daemon.log
        alarms = daemon.alarms()
    report(
        request,
        f"max_connections {limit}: burst of {burst} in {burst_time:.1f} s, {len(let_in)} let in, "
        f"{refused} refused with a Refused frame; well-behaved pair: {len(pair.received)} events",
    )
    assert not alarms, "\n".join(alarms[:20])
    assert refused == burst - room and len(let_in) == room, outcomes
    assert log.count("too many connections") >= refused


def test_many_stalled_half_frames_are_dropped(
    bus_config: Config, request: pytest.FixtureRequest
) -> None:
    stalled_count, idle_count, timeout = 200, 50, 1.0
    # Each sends most of a 60 KB frame: together they hold 12 MB until dropped.
    frame = encode_frame(pack_body("stall/event", {"pad": b"\x00" * 60_000}))
    after_wave: list[int] = []
    with serve(bus_config, max_event_size=65536, partial_frame_timeout=timeout) as daemon:
        config = daemon.config
        pair = WellBehavedPair(config)
        wait_until(lambda: len(pair.received) >= 20, "the well-behaved pair to start", SETTLE)
        baseline_fds, baseline_sockets, baseline_rss = daemon.fds(), daemon.sockets(), daemon.rss()
        # Two waves: the allocator keeps some of the first's buffers (grown as
        # the frames came in, freed at once); a leak shows as growth in the second.
        for _wave in range(2):
            stalled = [_connect(config.pull_address) for _ in range(stalled_count)]
            for sock in stalled:
                _send(sock, frame[: len(frame) - 100])
            idle = [_connect(config.pull_address) for _ in range(idle_count)]
            started = time.monotonic()
            holding_rss = daemon.rss()
            outcomes = _watch(stalled, lambda seen: len(seen) == stalled_count)
            dropped_after = time.monotonic() - started
            assert daemon.alive()
            # Connections that sent nothing hold no buffer: they are not stalled, and stay.
            idle_open = 0
            for sock in idle:
                sock.setblocking(False)
                try:
                    idle_open += sock.recv(1) != b""
                except BlockingIOError:
                    idle_open += 1
            for sock in stalled + idle:
                sock.close()
            daemon.wait_settled(baseline_fds, baseline_sockets, SETTLE)
            after_wave.append(daemon.rss())
            assert len(outcomes) == stalled_count and set(outcomes.values()) == {"closed"}
            # The sweep runs every timeout/2: all are gone by two sweeps after the timeout.
            assert dropped_after <= timeout + 2 * (timeout / 2) + 2.0
            assert idle_open == idle_count
        pair.stop()
        log = daemon.log
        alarms = daemon.alarms()
    first, second = after_wave
    report(
        request,
        f"partial_frame_timeout {timeout} s: {stalled_count} stalled connections dropped "
        f"within {dropped_after:.1f} s, {idle_open} of {idle_count} idle ones kept; RSS "
        f"{baseline_rss / MIB:.1f} MiB before, {holding_rss / MIB:.1f} MiB holding them, "
        f"{first / MIB:.1f} MiB after one wave, {second / MIB:.1f} MiB after two; "
        f"well-behaved pair: {len(pair.received)} events, in order",
    )
    assert not alarms, "\n".join(alarms[:20])
    assert log.count("half a frame") == 2 * stalled_count
    assert first <= baseline_rss + 2 * RSS_GROWTH
    assert second <= first + RSS_GROWTH


def test_listeners_that_leave_during_a_replay_leave_nothing(
    bus_config: Config, request: pytest.FixtureRequest
) -> None:
    """Resuming listeners that do not read their replay, then go: each replay
    waits for its listener to read, and must end when the listener is gone
    (it once waited forever, holding its events: 2.4 MiB a listener here)."""
    per_pass = 60
    with serve(bus_config) as daemon:
        config = daemon.config
        with Sender(config) as sender:
            for n in range(5000):
                sender.fire("replayed/event", {"n": n, "pad": "x" * 1000})
        wait_until(
            lambda: daemon.fds_settled(daemon.fds(), daemon.sockets()),
            "the daemon's descriptors to settle",
            SETTLE,
            PROC_STEP,
        )
        baseline_fds, baseline_sockets, baseline_rss = daemon.fds(), daemon.sockets(), daemon.rss()
        resume = encode_control(Subscribe((), since=0), Framing.BARE)
        after_pass = []
        for _ in range(2):
            for _ in range(per_pass):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(str(config.pub_address))
                sock.sendall(resume)
                time.sleep(0.05)  # its replay starts, and waits for it to read
                sock.close()
            daemon.wait_settled(baseline_fds, baseline_sockets, SETTLE)
            time.sleep(0.5)
            after_pass.append(daemon.rss())
        alarms = daemon.alarms()
    first, second = after_pass
    report(
        request,
        f"{2 * per_pass} listeners gone during their replay: RSS {baseline_rss / MIB:.1f} MiB "
        f"before, {first / MIB:.1f} MiB after {per_pass}, {second / MIB:.1f} MiB after "
        f"{2 * per_pass}",
    )
    assert not alarms, "\n".join(alarms[:20])
    # The allocator keeps some of what the replays used; the second pass adds little
    # (when the replays waited forever, each of the 60 kept 1.6 MiB: 97 MiB).
    assert first <= baseline_rss + 2 * RSS_GROWTH
    assert second <= first + 3 * RSS_SLACK
