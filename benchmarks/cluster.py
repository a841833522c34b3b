"""Cross-host events through NATS: events/s and latency from one bus to another.

    python -m benchmarks.cluster [--short] [--json]

Starts a nats-server with JetStream and two `saltbus serve --cluster` nodes
(``a`` and ``b``, separate processes, as on two hosts) in a temporary
directory on loopback, then:

- throughput: fires N events on ``a`` as fast as one client can and counts
  how long until a listener on ``b`` has them all (events/s end to end);
- latency: fires events on ``a`` at a steady rate well under that, and
  measures fire-to-receive on ``b`` (p50, p99, max).

Everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saltbus import Config, Listener, Sender
from saltbus.client.admin import fetch_stats
from saltbus.errors import SaltbusError

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
SALTBUS = Path(sys.executable).with_name("saltbus")
WAIT = 60.0


def _wait(predicate: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTBUS_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)


@contextlib.contextmanager
def _nats(root: Path) -> Iterator[str]:
    store, ports = root / "nats", root / "ports"
    ports.mkdir()
    argv = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(store)]
    with _process([*argv, "--ports_file_dir", str(ports)], root / "nats.log") as proc:
        found = ports / f"nats-server_{proc.pid}.ports"

        def ready() -> bool:
            try:
                return bool(json.loads(found.read_text()).get("nats"))
            except (OSError, ValueError):
                return False

        _wait(ready, "nats-server")
        yield str(json.loads(found.read_text())["nats"][0])


@contextlib.contextmanager
def _node(root: Path, name: str, url: str) -> Iterator[Config]:
    sock_dir, data_dir = root / name / "s", root / name / "d"
    config = Config.load(env={}, overrides={"sock_dir": sock_dir, "data_dir": data_dir})
    argv = [
        str(SALTBUS), "serve", "--sock-dir", str(sock_dir), "--data-dir", str(data_dir),
        "--cluster", url, "--node-name", name, "--import", "bench/", "--export", "bench/",
    ]  # fmt: skip
    (root / name).mkdir()
    with _process(argv, root / f"{name}.log"):

        def linked() -> bool:
            try:
                return bool(fetch_stats(config, 2.0)["cluster"]["state"] == "linked")
            except (SaltbusError, KeyError):
                return False

        _wait(linked, f"node {name} to link")
        yield config


def _receive(
    config: Config, count: int, out: list[tuple[int, int]], ready: threading.Event
) -> None:
    """Collect (receive ns, fire ns) of ``count`` events on ``config``'s bus."""
    with Listener(config, "bench/") as listener:
        listener.connect(10.0)
        ready.set()
        deadline = time.monotonic() + WAIT * 5
        while len(out) < count and time.monotonic() < deadline:
            event = listener.receive(timeout=1.0)
            if event is not None:
                out.append((time.time_ns(), int(event.data["t"])))


def _run(a: Config, b: Config, count: int, rate: float | None) -> list[tuple[int, int]]:
    received: list[tuple[int, int]] = []
    ready = threading.Event()
    thread = threading.Thread(target=_receive, args=(b, count, received, ready), daemon=True)
    thread.start()
    ready.wait(WAIT)
    interval = 1.0 / rate if rate else 0.0
    start = time.monotonic()
    with Sender(a) as sender:
        for i in range(count):
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sender.fire("bench/event", {"i": i, "t": time.time_ns()}, timeout=10.0)
    thread.join(WAIT * 5)
    if len(received) < count:
        raise SystemExit(f"benchmark: only {len(received)} of {count} events arrived")
    return received


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(short: bool) -> dict[str, Any]:
    count, samples, rate = (2_000, 300, 100.0) if short else (20_000, 3_000, 200.0)
    with tempfile.TemporaryDirectory(prefix="sbcl-") as tmp:
        root = Path(tmp)
        with _nats(root) as url, _node(root, "a", url) as a, _node(root, "b", url) as b:
            _run(a, b, 200, None)  # warm up: consumer, stream, connections
            started = time.time_ns()
            flood = _run(a, b, count, None)
            seconds = (max(r for r, _ in flood) - started) / 1e9
            steady = _run(a, b, samples, rate)
            latencies = [(r - t) / 1e6 for r, t in steady]
    return {
        "events": count,
        "events_per_second": round(count / seconds, 1),
        "latency_samples": samples,
        "latency_rate_per_second": rate,
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(_percentile(latencies, 0.99), 2),
        "latency_ms_max": round(max(latencies), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--short", action="store_true", help="a quick run (2,000 events)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = measure(args.short)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"cluster: {results['events']} events a -> NATS -> b at "
            f"{results['events_per_second']} events/s; latency at "
            f"{results['latency_rate_per_second']:g}/s: p50 {results['latency_ms_p50']} ms, "
            f"p99 {results['latency_ms_p99']} ms, max {results['latency_ms_max']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
