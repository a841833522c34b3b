"""Cross-host events through NATS: saltbus against nats-py alone, same NATS server.

    python -m benchmarks.cluster [--short] [--json] [--burst-only] [--burst-rounds N]

Starts a nats-server with JetStream and three `saltbus serve --cluster` nodes
(``a``, ``b`` and ``c``, separate processes, as on three hosts, journal at its
default) in a temporary directory on loopback; then, in rounds, alternately:

- (a) the reference, nats-py alone with its ordinary API: one process awaits
  ``js.publish`` in windows of 1,000 concurrent publishes into a stream of
  the same storage (file), another reads a durable pull consumer
  (``AckPolicy.ALL``, ``fetch(1000)``, acking the last of each batch);
- (b) saltbus: a Sender fires on bus ``a`` as fast as it can, a Listener on
  bus ``b`` receives (bus -> journal -> NATS -> journal -> bus).

Each event is ~500 bytes with a unique id; each round checks that every
event arrived exactly once. Events/s is counted from the first publish/fire
to the last delivery; "after last" is the last delivery's delay after the
last publish/fire (how late a burst lands). Then the latency end to end at
a steady 1,000 events/s (p50, p99, max).

Then the burst, a Salt job on 10,000 minions, in rounds, alternately:
(a) the reference publishes 10,000 events as above and two pull consumers
(two processes) read them; (b) a Sender fires the job's 10,000 returns
(``salt/job/<jid>/ret/m<n>``, one jid, the last fire acknowledged) on bus
``a``, a Listener on each of ``b`` and ``c`` receives them. The time from
the last publish's acknowledgement (the last fire) to the last delivery on
both is the row; the target (issue 16) is (b) no later than (a), medians
of BURST_ROUNDS rounds each (a round's tail spreads ±30-50 % on either
side, so the median of 5 still changed sides from run to run). Node ``c``
imports only the job's returns, so it is idle in the rounds above.
Everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
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

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from saltbus import Config, Listener, Sender
from saltbus.cli.common import positive_int
from saltbus.client.admin import fetch_stats
from saltbus.errors import SaltbusError
from saltbus.wire import pack_body

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
SALTBUS = Path(sys.executable).with_name("saltbus")
WAIT = 60.0
PAD = "x" * 440  # with the id, stamp and tag: an event of ~500 bytes
WINDOW = 1000  # the reference's concurrent publishes, and its fetch batch
SETTLE = 0.5  # after the last expected event, how long to look for a duplicate
LATENCY_RATE = 1000.0
BURST = 10_000
# Burst rounds in a full run: each (a) and (b) alternately; the medians are compared.
BURST_ROUNDS = 16
JOB_PREFIX = "salt/job/"
JID = "20261204054700123456"
JOB_PAD = "r" * 406  # with the id, stamp and the longer tag: ~500 bytes, as (a)'s


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
def _node(root: Path, name: str, url: str, prefixes: tuple[str, ...]) -> Iterator[Config]:
    sock_dir, data_dir = root / name / "s", root / name / "d"
    config = Config.load(env={}, overrides={"sock_dir": sock_dir, "data_dir": data_dir})
    argv = [
        str(SALTBUS), "serve", "--sock-dir", str(sock_dir), "--data-dir", str(data_dir),
        "--cluster", url, "--node-name", name,
    ]  # fmt: skip
    for prefix in prefixes:
        argv += ["--import", prefix, "--export", prefix]
    (root / name).mkdir()
    with _process(argv, root / f"{name}.log"):

        def linked() -> bool:
            try:
                return bool(fetch_stats(config, 2.0)["cluster"]["state"] == "linked")
            except (SaltbusError, KeyError):
                return False

        _wait(linked, f"node {name} to link")
        yield config


# -- (a) the reference: nats-py alone -------------------------------------------


def _payload(i: int) -> bytes:
    return pack_body("bench/event", {"i": i, "pad": PAD, "_stamp": "2026-01-01T00:00:00.000000"})


def _job_return(i: int) -> tuple[str, dict[str, Any]]:
    return f"{JOB_PREFIX}{JID}/ret/m{i}", {"i": i, "t": 0, "pad": JOB_PAD}


def _job_return_bytes() -> int:
    tag, data = _job_return(BURST - 1)
    return len(pack_body(tag, {**data, "_stamp": "2026-01-01T00:00:00.000000"}))


async def _reference_read(url: str, stream: str, count: int, durable: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage=StorageType.FILE)
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL)
        subscription = await js.pull_subscribe(f"{stream}.>", durable, config=config)
        print("ready", flush=True)
        seen: set[int] = set()
        received, last = 0, 0
        deadline = time.monotonic() + WAIT * 5
        while received < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages = await subscription.fetch(WINDOW, timeout=1.0)
                last = time.time_ns()
                received += len(messages)
                seen.update(int.from_bytes(m.data[-4:], "big") for m in messages)
                await messages[-1].ack()
        return {"received": received, "unique": len(seen), "last_delivery": last}
    finally:
        await nc.close()


async def _reference_publish(url: str, stream: str, count: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        bodies = [_payload(i) + i.to_bytes(4, "big") for i in range(count)]
        first = time.time_ns()
        for start in range(0, count, WINDOW):
            window = bodies[start : start + WINDOW]
            await asyncio.gather(*(js.publish(f"{stream}.event", body) for body in window))
        return {"first_fire": first, "last_fire": time.time_ns()}
    finally:
        await nc.close()


_THIS = (sys.executable, "-m", "benchmarks.cluster")


def _role_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@contextlib.contextmanager
def _ready_roles(roles: list[list[str]], what: str) -> Iterator[list[subprocess.Popen[str]]]:
    """Start this module once per ``roles`` entry (its arguments), each in a
    process of its own, and wait for each to print ``ready``; kill any still
    running on the way out."""
    started: list[subprocess.Popen[str]] = []
    try:
        for role in roles:
            process = subprocess.Popen(
                [*_THIS, *role], stdout=subprocess.PIPE, text=True, env=_role_env()
            )
            started.append(process)
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit(f"benchmark: {what} did not start")
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(WAIT)


def _outputs(started: list[subprocess.Popen[str]]) -> list[Any]:
    """The JSON each started role prints when it ends."""
    return [json.loads(process.communicate(timeout=WAIT * 5)[0]) for process in started]


def _reference(url: str, count: int, stream: str, readers: int = 1) -> dict[str, Any]:
    """One round of (a): ``readers`` reader processes (a durable consumer each)
    on a new stream, then a publisher process; the last delivery is the
    latest of the readers'."""
    roles = [["--reference", f"read:reader{n}", url, stream, str(count)] for n in range(readers)]
    with _ready_roles(roles, "the reference reader") as started:
        publisher = subprocess.run(
            [*_THIS, "--reference", "publish", url, stream, str(count)],
            capture_output=True, text=True, env=_role_env(), timeout=WAIT * 5, check=True,
        )  # fmt: skip
        reads = _outputs(started)
    for read in reads:
        if read["received"] != count or read["unique"] != count:
            raise SystemExit(f"benchmark: the reference delivered {read} of {count}")
    result = {
        **json.loads(publisher.stdout),
        "last_delivery": max(read["last_delivery"] for read in reads),
    }
    return _rates(result, count)


# -- (b) saltbus, bus to bus ---------------------------------------------------------


def _receive(
    config: Config,
    count: int,
    out: list[tuple[int, int, int]],
    ready: threading.Event,
    prefix: str = "bench/",
) -> None:
    """Collect (receive ns, fire ns, id) of ``count`` events on ``config``'s bus, and any
    that arrive within SETTLE after them (duplicates)."""
    with Listener(config, prefix) as listener:
        listener.connect(10.0)
        ready.set()
        deadline = time.monotonic() + WAIT * 5
        settled: float | None = None
        while time.monotonic() < (settled or deadline):
            event = listener.receive(timeout=0.2)
            if event is not None:
                out.append((time.time_ns(), int(event.data["t"]), int(event.data["i"])))
            if settled is None and len(out) >= count:
                settled = time.monotonic() + SETTLE


def _saltbus(a: Config, b: Config, count: int, rate: float | None = None) -> dict[str, Any]:
    received: list[tuple[int, int, int]] = []
    ready = threading.Event()
    thread = threading.Thread(target=_receive, args=(b, count, received, ready), daemon=True)
    thread.start()
    ready.wait(WAIT)
    interval = 1.0 / rate if rate else 0.0
    with Sender(a) as sender:
        first = time.time_ns()
        start = time.monotonic()
        for i in range(count):
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sender.fire("bench/event", {"i": i, "t": time.time_ns(), "pad": PAD}, timeout=10.0)
        last = time.time_ns()
    thread.join(WAIT * 5)
    ids = [i for _, _, i in received]
    if len(ids) != count or len(set(ids)) != count:
        raise SystemExit(
            f"benchmark: {len(ids)} events ({len(set(ids))} distinct) arrived of {count}"
        )
    result: dict[str, Any] = {
        "first_fire": first,
        "last_fire": last,
        "last_delivery": max(r for r, _, _ in received),
    }
    result["latencies_ms"] = [(r - t) / 1e6 for r, t, _ in received]
    return result


def _burst(a: Config, listeners: list[Config]) -> dict[str, Any]:
    """One round of (b)'s burst: a job's BURST returns fired on ``a``, each
    received once, in order, on every one of ``listeners``' buses. Each
    listener is a process of its own, as the reference's readers are (threads
    of this process would share its GIL with the firing Sender)."""
    roles = [["--listen", str(config.sock_dir), str(BURST), JOB_PREFIX] for config in listeners]
    with _ready_roles(roles, "a burst listener") as started:
        with Sender(a) as sender:
            first = time.time_ns()
            for i in range(BURST):
                tag, data = _job_return(i)
                # The last acknowledged: the publisher has taken every one.
                sender.fire(tag, data, timeout=10.0, ack=i == BURST - 1)
            last = time.time_ns()
        received = _outputs(started)
    for out in received:
        if [i for _, _, i in out] != list(range(BURST)):
            raise SystemExit(
                f"benchmark: the burst arrived as {len(out)} events "
                f"({len({i for _, _, i in out})} distinct), not {BURST} once each in order"
            )
    delivered = max(r for out in received for r, _, _ in out)
    return _rates({"first_fire": first, "last_fire": last, "last_delivery": delivered}, BURST)


def _listen(sock_dir: str, count: int, prefix: str) -> list[tuple[int, int, int]]:
    """The ``--listen`` role: ``_receive`` in a process of its own; prints
    ``ready`` once subscribed."""
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})
    out: list[tuple[int, int, int]] = []
    ready = threading.Event()
    thread = threading.Thread(target=_receive, args=(config, count, out, ready, prefix))
    thread.start()
    if not ready.wait(WAIT):
        raise SystemExit("benchmark: the listener did not subscribe")
    print("ready", flush=True)
    thread.join()
    return out


def _rates(result: dict[str, Any], count: int) -> dict[str, Any]:
    return {
        "events_per_second": count / ((result["last_delivery"] - result["first_fire"]) / 1e9),
        "after_last_s": (result["last_delivery"] - result["last_fire"]) / 1e9,
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(
    short: bool, *, burst_only: bool = False, burst_rounds: int | None = None
) -> dict[str, Any]:
    """``burst_only``: the burst rows alone (for comparing two versions of
    the code, which needs more rounds than the full run's 5)."""
    count, rounds, samples = (2_000, 2, 500) if short else (20_000, 5, 5_000)
    if burst_only:
        rounds = 0
    if burst_rounds is None:
        burst_rounds = 2 if short else BURST_ROUNDS
    load_before = os.getloadavg()
    reference: list[dict[str, Any]] = []
    saltbus: list[dict[str, Any]] = []
    reference_burst: list[dict[str, Any]] = []
    saltbus_burst: list[dict[str, Any]] = []
    both = ("bench/", JOB_PREFIX)
    with tempfile.TemporaryDirectory(prefix="sbcl-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        url = stack.enter_context(_nats(root))
        a = stack.enter_context(_node(root, "a", url, both))
        b = stack.enter_context(_node(root, "b", url, both))
        c = stack.enter_context(_node(root, "c", url, (JOB_PREFIX,)))
        _saltbus(a, b, 200)  # warm up: consumer, stream, connections
        for round_ in range(rounds):
            reference.append(_reference(url, count, f"REF{round_}"))
            saltbus.append(_rates(_saltbus(a, b, count), count))
        latencies = [] if burst_only else _saltbus(a, b, samples, LATENCY_RATE)["latencies_ms"]
        for round_ in range(burst_rounds):
            reference_burst.append(_reference(url, BURST, f"BURST{round_}", readers=2))
            saltbus_burst.append(_burst(a, [b, c]))
    burst_reference = _spread([r["after_last_s"] for r in reference_burst])
    burst_saltbus = _spread([s["after_last_s"] for s in saltbus_burst])
    ratios = [
        s["events_per_second"] / r["events_per_second"]
        for s, r in zip(saltbus, reference, strict=True)
    ]
    results = {
        "burst_events": BURST,
        "burst_rounds": burst_rounds,
        "burst_event_bytes": _job_return_bytes(),
        "burst_reference_after_last_s": burst_reference,
        "burst_saltbus_after_last_s": burst_saltbus,
        "burst_saltbus_events_per_second": _spread([s["events_per_second"] for s in saltbus_burst]),
        "burst_target_met": burst_saltbus["median"] <= burst_reference["median"],
        "exactly_once": True,  # each round raised otherwise
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "load": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if burst_only:
        return results
    return {
        **results,
        "events": count,
        "rounds": rounds,
        "event_bytes": len(_payload(0)),
        "reference_events_per_second": _spread([r["events_per_second"] for r in reference]),
        "saltbus_events_per_second": _spread([s["events_per_second"] for s in saltbus]),
        "ratio": _spread(ratios),
        "reference_after_last_s": _spread([r["after_last_s"] for r in reference]),
        "saltbus_after_last_s": _spread([s["after_last_s"] for s in saltbus]),
        "latency_rate_per_second": LATENCY_RATE,
        "latency_samples": samples,
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p99": _percentile(latencies, 0.99),
        "latency_ms_max": max(latencies),
    }


def table(results: dict[str, Any]) -> str:
    def row(name: str, key: str, unit: str, digits: int) -> str:
        s = results[key]
        return (
            f"{name:<38} {s['median']:>10.{digits}f} {s['min']:>10.{digits}f} "
            f"{s['max']:>10.{digits}f}  {unit}"
        )

    heading = f"{'':<38} {'median':>10} {'min':>10} {'max':>10}"
    burst = [
        f"burst: {results['burst_rounds']} rounds of {results['burst_events']} events of "
        f"~{results['burst_event_bytes']} bytes on one bus, delivered on two",
        row("(a) last delivery on both after last", "burst_reference_after_last_s", "s", 3),
        row("(b) job returns on b and c after last", "burst_saltbus_after_last_s", "s", 3),
        row(
            "(b) burst, first fire to last delivery",
            "burst_saltbus_events_per_second",
            "events/s",
            0,
        ),
        "burst target, (b) no later than (a) (medians): "
        + ("met" if results["burst_target_met"] else "not met"),
        "every event delivered exactly once in every round",
    ]
    load = results["load"]
    where = f"{results['date']}; {results['machine']}; load {load[0]} -> {load[1]}"
    if "events" not in results:  # --burst-only
        return "\n".join([f"cluster, the burst only; {where}", heading, *burst])
    return "\n".join(
        [
            f"cluster: {results['rounds']} rounds of {results['events']} events of "
            f"{results['event_bytes']} bytes, one NATS server; {where}",
            heading,
            row("(a) nats-py alone", "reference_events_per_second", "events/s", 0),
            row("(b) saltbus bus -> NATS -> bus", "saltbus_events_per_second", "events/s", 0),
            row("ratio (b)/(a)", "ratio", "", 2),
            row("(a) last delivery after last publish", "reference_after_last_s", "s", 3),
            row("(b) last delivery after last fire", "saltbus_after_last_s", "s", 3),
            f"(b) latency at {results['latency_rate_per_second']:g}/s "
            f"({results['latency_samples']} events): p50 {results['latency_ms_p50']:.2f} ms, "
            f"p99 {results['latency_ms_p99']:.2f} ms, max {results['latency_ms_max']:.2f} ms",
            *burst,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--short", action="store_true", help="a quick run (2 rounds of 2,000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--burst-only",
        action="store_true",
        help="only the burst rows (comparing two versions of the code needs more rounds)",
    )
    parser.add_argument(
        "--burst-rounds",
        type=positive_int,
        metavar="N",
        help=f"burst rounds (default {BURST_ROUNDS}; 2 with --short)",
    )
    parser.add_argument(
        "--reference", nargs=4, metavar=("ROLE", "URL", "STREAM", "COUNT"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--listen", nargs=3, metavar=("SOCK_DIR", "COUNT", "PREFIX"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.listen:
        sock_dir, count, prefix = args.listen
        print(json.dumps(_listen(sock_dir, int(count), prefix)), flush=True)
        return 0
    if args.reference:
        role, url, stream, count = args.reference
        if role.startswith("read:"):
            read = _reference_read(url, stream, int(count), role.partition(":")[2])
            print(json.dumps(asyncio.run(read)), flush=True)
        else:
            print(json.dumps(asyncio.run(_reference_publish(url, stream, int(count)))), flush=True)
        return 0
    results = measure(args.short, burst_only=args.burst_only, burst_rounds=args.burst_rounds)
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
