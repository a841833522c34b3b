"""The daemon's CPU per event at a paced rate, read from /proc: a measure that a
busy shared machine barely moves, unlike wall-clock latency.

``python -m benchmarks.daemon_cpu [--events N] [--rate R] [--journal J] [--src DIR]``

Starts ``saltbus serve`` (default journal unless ``--journal``; ``--src`` runs
another checkout's sources, for an A/B in one session), connects one raw
subscriber (a forked process, which also records each event's latency from the
``sent`` in its data), and fires N events at R per second from a raw client:
one frame per ``send()``, each read by the daemon alone (its idle path). It
prints the daemon's CPU per event, thread by thread (utime+stime from
``/proc/<pid>/task``, before and after the firing), their voluntary context
switches per event (wake-ups, and waits for the GIL), and the latency
percentiles (indicative only: those move with the machine's load).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import msgpack

from benchmarks.procs import PUB, PULL

TICK = os.sysconf("SC_CLK_TCK")


def thread_usage(pid: int) -> dict[str, tuple[float, int]]:
    """Per thread (name:tid): CPU seconds and voluntary context switches."""
    usage = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        usage[f"{name}:{tid}"] = ((int(fields[11]) + int(fields[12])) / TICK, switches)
    return usage


def listen(path: str, count: int, conn: Connection) -> None:
    sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sub.connect(path)
    conn.send("ready")
    unpacker = msgpack.Unpacker(raw=False)
    latencies: list[float] = []
    while len(latencies) < count:
        readable, _, _ = select.select([sub], [], [], 10)
        data = sub.recv(1 << 20) if readable else b""
        if not data:
            break
        now = time.monotonic()
        unpacker.feed(data)
        for frame in unpacker:
            body = frame["body"]
            latencies.append(now - msgpack.unpackb(body[body.index(b"\n\n") + 2 :])["sent"])
    conn.send(latencies)


def frame(n: int) -> bytes:
    data = {"n": n, "sent": time.monotonic(), "x": "y" * 40, "_stamp": "2026-12-04T05:00:00.000000"}
    body = b"bench/cpu\n\n" + msgpack.packb(data, use_bin_type=True)
    return msgpack.packb({"head": {}, "body": body}, use_bin_type=True)  # type: ignore[no-any-return]


def wait_for_sockets(sock_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if (sock_dir / PUB).exists() and (sock_dir / PULL).exists():
            return
        if proc.poll() is not None:
            raise SystemExit(f"saltbus serve exited with {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit("saltbus serve did not bind its sockets within 30 s")


def run(events: int, rate: float, journal: str | None, src: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sbc-", dir="/tmp"))
    sock_dir = tmp / "s"
    sock_dir.mkdir()
    argv = [sys.executable, "-m", "saltbus.cli.main", "serve", "--sock-dir", str(sock_dir)]
    argv += ["--data-dir", str(tmp / "data")]
    if journal is not None:
        argv += ["--journal", journal]
    env = dict(os.environ, PYTHONPATH=src) if src else None
    with (tmp / "serve.log").open("wb") as log:
        daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        wait_for_sockets(sock_dir, daemon)
        mine, theirs = multiprocessing.Pipe()
        listener = multiprocessing.get_context("fork").Process(
            target=listen, args=(str(sock_dir / PUB), events, theirs)
        )
        listener.start()
        if not mine.poll(10) or mine.recv() != "ready":
            raise SystemExit("the listener did not connect")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as firer:
            firer.connect(str(sock_dir / PULL))
            time.sleep(0.5)  # connected and idle before the count starts
            before = thread_usage(daemon.pid)
            start = time.monotonic()
            for n in range(events):
                due = start + n / rate
                if (ahead := due - time.monotonic()) > 0:
                    time.sleep(ahead)
                firer.sendall(frame(n))
            latencies = sorted(mine.recv() if mine.poll(60) else [])
            after = thread_usage(daemon.pid)
        listener.join(10)
        report(events, before, after, latencies)
    finally:
        daemon.terminate()
        daemon.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    events: int,
    before: dict[str, tuple[float, int]],
    after: dict[str, tuple[float, int]],
    latencies: list[float],
) -> None:
    total = 0.0
    for thread, (cpu, switches) in sorted(after.items()):
        cpu0, switches0 = before.get(thread, (0.0, 0))
        per_event = (cpu - cpu0) / events * 1e6
        total += per_event
        if per_event or switches > switches0:
            print(
                f"  thread {thread:28s} {per_event:6.1f} µs/event CPU, "
                f"{(switches - switches0) / events:.2f} voluntary switches/event"
            )
    print(f"daemon {total:.1f} µs/event CPU; load {os.getloadavg()[0]:.1f}")
    if latencies:

        def ms(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3

        print(
            f"latency ms (indicative): p50 {ms(0.5):.3f} p99 {ms(0.99):.3f} "
            f"max {latencies[-1] * 1e3:.2f}; received {len(latencies)} of {events}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.daemon_cpu", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--journal", choices=("batch", "fsync", "none"))
    parser.add_argument("--src", help="a checkout's src directory to run the daemon from")
    args = parser.parse_args(argv)
    run(args.events, args.rate, args.journal, args.src)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
