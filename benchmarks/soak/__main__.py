"""``python -m benchmarks.soak [--minutes N] [--seed S] [--break journal-none] [--json FILE]``

Run with the project's python from the repository root, as root (the journal's
disk is a tmpfs it mounts, and PostgreSQL runs as its own user). Exits 1 when
the reconciler found a violation, 2 when the harness could not start.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
from pathlib import Path

from benchmarks.soak.processes import SoakError
from benchmarks.soak.report import document, text
from benchmarks.soak.run import Options, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="soak and chaos run: three federated saltbus nodes under load and faults, "
        "then a reconciler checks every acknowledged event in every consumer",
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="minutes of load (default 60)")
    parser.add_argument("--seed", type=int, help="the fault schedule's seed (default: random)")
    parser.add_argument("--rate", type=float, default=200.0, help="steady events/s, all nodes")
    parser.add_argument("--burst", type=int, default=2000, help="events per burst, all nodes")
    parser.add_argument(
        "--break",
        dest="breaks",
        choices=["journal-none"],
        help="inject a fault saltbus does not survive (journal none + publisher kill -9): "
        "the reconciler must report the loss",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    return parser.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    options = Options(
        args.minutes, seed, rate=args.rate, burst=args.burst, breaks=args.breaks, keep=args.keep
    )
    try:
        outcome = run(options)
    except SoakError as exc:
        print(f"soak: cannot run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(text(outcome))
    if args.json is not None:
        args.json.write_text(json.dumps(document(outcome), indent=1) + "\n")
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    sys.exit(main())
