"""A real Prometheus server for the metrics tests (Debian's ``prometheus``).

:func:`prometheus` starts it on a free loopback port with a generated config
(scrape interval 1 s, the targets the test names) and its database in the
test's directory, and stops it by its pid. :meth:`Prometheus.wait_for` polls
PromQL through the HTTP API (``/api/v1/query``) until the answer is the one
expected; every wait is bounded. Also plain HTTP helpers for the endpoints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.waiting import wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT = 30.0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET (an error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The vector an instant query returns (``[{metric, value}]``)."""
        status, body = http_get(
            f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        )
        assert status == 200, f"{promql}: {status} {body}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def values(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Each series' labels (without name, job and instance; Prometheus keeps no
        empty label) and value."""
        return {
            tuple(
                sorted(
                    (k, v)
                    for k, v in r["metric"].items()
                    if k not in ("__name__", "job", "instance")
                )
            ): float(r["value"][1])
            for r in self.query(promql)
        }

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_for(self, promql: str, expected: float, timeout: float = WAIT) -> None:
        """Until ``promql`` gives one series of value ``expected``."""
        deadline = time.monotonic() + timeout
        while (value := self.scalar(promql)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{promql} is {value}, not {expected}, after {timeout} s; "
                    f"Prometheus log:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.3)


@contextlib.contextmanager
def prometheus(workdir: Path, targets: Mapping[str, str]) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` ({job: "host:port"}) every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [target]}],
            }
            for job, target in targets.items()
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until(
            lambda: process.poll() is not None or _ready(server.url),
            "Prometheus to start",
            WAIT,
            0.2,
        )
        assert process.poll() is None, f"prometheus exited:\n{log.read_text()}"
        yield server
    finally:
        process.terminate()
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)


def _ready(url: str) -> bool:
    try:
        return http_get(f"{url}/-/ready", timeout=1.0)[0] == 200
    except OSError:
        return False
