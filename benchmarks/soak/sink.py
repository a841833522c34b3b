"""The http returner's receiver: ``python -m benchmarks.soak.sink --port P --out FILE``.

A small HTTP server on loopback, its own long-lived process (the topology
starts and stops it): each POSTed NDJSON batch is appended to ``FILE``, one
event id a line, before it answers 200; the reconciler reads only that file.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TextIO


class Receiver(HTTPServer):
    def __init__(self, port: int, out: TextIO) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.out = out
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ids = []
        for line in body.splitlines():
            try:
                data = json.loads(line).get("data")
            except (ValueError, AttributeError):
                continue
            if isinstance(data, dict) and "id" in data:
                ids.append(str(data["id"]))
        with self.server.lock:
            # Written and flushed before the answer: what the returner was told
            # is received is on disk (a torn last line would be a lost event).
            self.server.out.write("".join(f"{i}\n" for i in ids))
            self.server.out.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: thousands of requests an hour."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak.sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with args.out.open("a") as out, Receiver(args.port, out) as server:
        print(f"receiving on {args.port}", file=sys.stderr, flush=True)
        server.serve_forever()  # until SIGTERM (SystemExit closes both)
    return 0


if __name__ == "__main__":
    sys.exit(main())
