"""A firing client, run as its own process per node:
``python -m benchmarks.soak.load --config FILE --node NAME --rate R --seconds S --out FILE``.

Fires acknowledged events at a steady rate with bursts (at times drawn from
the seed), each with a unique id ``<node>-<n>``; every tenth is tagged for
the reactor. Each outcome is appended to ``--out`` as it comes, so a crash of
anything else leaves the record whole: ``A id seq time tag`` for an acked
fire, ``U id time error`` for one that was not (it may or may not have been
journaled: the reconciler does not count on it).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from pathlib import Path

from saltbus import Config, Sender
from saltbus.errors import SaltbusError

PAD = "p" * 160
REACT_EVERY = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak.load")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events/s between bursts")
    parser.add_argument("--burst", type=int, default=0, help="events per burst")
    parser.add_argument("--burst-every", type=float, default=60.0, help="mean s between bursts")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    config = Config.load(args.config, env={})
    rng = random.Random(f"{args.seed}-{args.node}")
    start = time.monotonic()
    end = start + args.seconds
    next_burst = start + rng.uniform(0.3, 1.0) * args.burst_every
    n = 0
    sender: Sender | None = None
    with args.out.open("a", buffering=1) as out:
        try:
            while time.monotonic() < end:
                count = 1
                if args.burst and time.monotonic() >= next_burst:
                    count = args.burst
                    next_burst += rng.uniform(0.5, 1.5) * args.burst_every
                for _ in range(count):
                    n += 1
                    event_id = f"{args.node}-{n}"
                    kind = "react" if n % REACT_EVERY == 0 else "ev"
                    tag = f"soak/{kind}/{args.node}"
                    try:
                        if sender is None:
                            sender = Sender(config)
                        seq = sender.fire(tag, {"id": event_id, "pad": PAD}, 5.0, ack=True).seq
                        out.write(f"A {event_id} {seq} {time.time():.3f} {tag}\n")
                    except SaltbusError as exc:
                        reason = str(exc).replace("\n", " ")[:200]
                        out.write(
                            f"U {event_id} {time.time():.3f} {type(exc).__name__}: {reason}\n"
                        )
                        if sender is not None:
                            sender.close()
                            sender = None
                        time.sleep(0.2)
                if count == 1:
                    time.sleep(1.0 / args.rate)
        except KeyboardInterrupt:
            pass
        finally:
            if sender is not None:
                sender.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
