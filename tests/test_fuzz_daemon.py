"""Fuzzing a live daemon: hostile bytes on many connections to both sockets.

A `saltbus serve` process (so that its memory and file descriptors can be read
from /proc) gets what tests/test_fuzz_codec.py feeds the codec (random bytes,
mutated and truncated frames, wrong msgpack types, huge declared lengths, tags
that are not UTF-8, data nested thousands deep), on connections to the pull
socket and to the publish socket, sent in random chunks and then closed,
half-closed, or left open and stalled. Meanwhile a well-behaved Sender and
Listener exchange numbered events. The properties:

- the daemon never crashes and never logs an exception that escaped;
- its resident memory stays under a bound, during the run and after it,
  measured from a warmed-up daemon: its journal already larger than SQLite's
  page cache (which grows with the file up to its own bound, CACHE_SIZE_KIB);
- its file descriptors come back to where they were once the clients left;
- the well-behaved pair sees every one of its events, in order, throughout.

Both framings of the pull socket are covered: Salt 3007's (bare msgpack) and
3008's (a length before each frame). ``SALTBUS_FUZZ_EXAMPLES`` (default 2000) is
the number of hostile inputs sent in all, split between the two; the full run is::

    SALTBUS_FUZZ_EXAMPLES=100000 ./dev test tests/test_fuzz_codec.py tests/test_fuzz_daemon.py
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from saltbus import Config, Sender
from saltbus.wire import Framing
from tests.fuzz_support import (
    EXAMPLES,
    WellBehavedPair,
    hostile_inputs,
    report,
    serve,
    subscriber_requests,
)
from tests.waiting import wait_until

MIB = 2**20
GENERATIONS = ["3007", "3008"]
# Small frames and queues, so that the memory bound below means something; a
# short stall timeout, so that stalled connections are dropped during the run.
SETTINGS = {
    "max_event_size": 65536,
    "subscriber_queue_bytes": 1024 * 1024,
    "partial_frame_timeout": 2.0,
    "max_connections": 256,
}
# Hostile connections left open at once (the oldest is closed when one more is held).
HELD = 24
# The daemon's resident memory may grow this much over its size once warmed up.
RSS_GROWTH = 32 * MIB
# Events journaled before the attack: more pages than the journal's page cache
# holds (CACHE_SIZE_KIB, 16 MiB), so that its growth is over by then.
WARM_UP_EVENTS = 120_000
SETTLE = 20.0


def warm_up(config: Config) -> None:
    """Journal WARM_UP_EVENTS events (the last one acknowledged, so all are)."""
    with Sender(config) as sender:
        for n in range(WARM_UP_EVENTS):
            sender.fire("warmup/evt", {"n": n, "pad": "x" * 100}, ack=n == WARM_UP_EVENTS - 1)


def by_quarter(samples: list[int]) -> str:
    """The highest of each quarter of the samples, in MiB."""
    size = max(1, -(-len(samples) // 4))
    peaks = (max(samples[i : i + size]) / MIB for i in range(0, len(samples), size))
    return " ".join(f"{peak:.1f}" for peak in peaks) or "no samples"


def _send(sock: socket.socket, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except OSError:  # closed by the daemon (a bad frame): what it should do
            return


def _read_to_eof(sock: socket.socket, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline and sock.recv(65536):
            pass


@pytest.mark.timeout(max(300, EXAMPLES // 20))  # the full run takes many minutes
@pytest.mark.parametrize("salt_version", GENERATIONS)
def test_hostile_clients_against_a_live_daemon(
    bus_config: Config, salt_version: str, request: pytest.FixtureRequest
) -> None:
    inputs_wanted = max(50, EXAMPLES // len(GENERATIONS))
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    with serve(bus_config, salt_version=salt_version, **SETTINGS) as daemon:
        config = daemon.config
        pull_framing = config.generation.pull_framing
        warm_up(config)
        pair = WellBehavedPair(config)
        wait_until(lambda: len(pair.received) >= 50, "the well-behaved pair to start", SETTLE)
        baseline_rss, baseline_fds, baseline_sockets = daemon.rss(), daemon.fds(), daemon.sockets()
        daemon.reset_peak_rss()  # the warm-up's burst is not the attack's
        samples: list[int] = []
        held: collections.deque[socket.socket] = collections.deque()
        peak_sampled = baseline_rss

        @settings(
            max_examples=max(20, inputs_wanted * 2 // 5),
            deadline=None,
            phases=[Phase.generate],  # a live daemon's state is not replayed or shrunk
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def attack(data: st.DataObject) -> None:
            nonlocal peak_sampled
            opened: list[tuple[socket.socket, str]] = []
            for _ in range(data.draw(st.integers(1, 4), label="connections")):
                target = data.draw(st.sampled_from(["pull", "publish"]), label="socket")
                if target == "pull":
                    payload = data.draw(hostile_inputs(pull_framing), label="payload")
                else:
                    # A listener's decoder detects the framing; half of what it
                    # gets looks like what saltbus's listeners write.
                    framing = data.draw(st.sampled_from([Framing.BARE, Framing.LENGTH_PREFIXED]))
                    kinds = subscriber_requests(framing) | hostile_inputs(framing)
                    payload = data.draw(kinds, label="payload")
                cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=4)))
                chunks = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
                address = config.pull_address if target == "pull" else config.pub_address
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5.0)
                sock.connect(str(address))
                _send(sock, chunks)
                counts[target] += 1
                counts["bytes"] += len(payload)
                opened.append((sock, data.draw(st.sampled_from(["close", "half", "hold"]))))
            # All of one example's connections are open at once; then each ends its way.
            for sock, then in opened:
                if then == "hold":
                    held.append(sock)
                    if len(held) > HELD:
                        held.popleft().close()
                    continue
                if then == "half":
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    _read_to_eof(sock)
                sock.close()
            counts["examples"] += 1
            if counts["examples"] % 25 == 0:
                samples.append(daemon.rss())
                peak_sampled = max(peak_sampled, samples[-1])
            assert daemon.alive(), daemon.log[-5000:]
            pair.check()

        try:
            attack()
        finally:
            while held:
                held.popleft().close()
        during_peak = max(peak_sampled, daemon.peak_rss())
        assert daemon.alive(), daemon.log[-5000:]
        daemon.wait_settled(baseline_fds, baseline_sockets, SETTLE)
        end_fds, end_sockets, end_rss = daemon.fds(), daemon.sockets(), daemon.rss()
        pair.stop()
        alarms = daemon.alarms()
    inputs = counts["pull"] + counts["publish"]
    line = (
        f"fuzz daemon (Salt {salt_version} framing): {inputs} hostile inputs "
        f"({counts['pull']} to the pull socket, {counts['publish']} to the publish socket, "
        f"{counts['bytes'] / MIB:.1f} MiB) in {time.monotonic() - started:.1f} s; "
        f"RSS {baseline_rss / MIB:.1f} MiB warmed up, peak {during_peak / MIB:.1f} MiB, "
        f"{end_rss / MIB:.1f} MiB after; fds {baseline_fds} before, {end_fds} after "
        f"(sockets {baseline_sockets}, {end_sockets}); "
        f"well-behaved pair: {len(pair.received)} of {pair.fired} events, in order; "
        f"RSS by quarter of the run (MiB): {by_quarter(samples)}"
    )
    report(request, line)
    assert not alarms, "\n".join(alarms[:20])
    assert inputs >= inputs_wanted * 0.9, line
    assert during_peak <= baseline_rss + RSS_GROWTH, line
    assert end_rss <= baseline_rss + RSS_GROWTH, line
