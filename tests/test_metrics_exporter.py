"""``saltbus exporter`` as a process: Salt job events fired on a bus with
saltbus's Sender are counted, and a real Prometheus reads the counts; then a
real Salt master with a minion (ipc and tcp mode), and ``salt MINION
test.ping`` and a failing ``cmd.run``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saltbus.client import Listener, Sender
from saltbus.config import Config
from tests.interop.salt_peer_client import salt_python
from tests.prometheus_support import free_port, http_get, prometheus
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until

WAIT = 30.0


class ExporterProcess:
    def __init__(self, *args: str, log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [str(SALTBUS), "exporter", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def url(self) -> str:
        match = wait_until(
            lambda: (
                re.search(r"at (http://127\.0\.0\.1:\d+)/metrics", self.log)
                or self.popen.poll() is not None
            ),
            "the exporter to print its address",
            WAIT,
        )
        assert self.popen.poll() is None, self.log
        return str(match.group(1))

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            return self.popen.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(WAIT)
            raise AssertionError(f"the exporter did not stop on SIGTERM:\n{self.log}") from None


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        proc = ExporterProcess(*args, log=tmp_path / f"exporter-{len(started)}.log")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(WAIT)


def fire_job(sender: Sender, jid: str, fun: str, arg: list[str], returns: dict[str, int]) -> None:
    minions = sorted(returns)
    sender.fire(
        f"salt/job/{jid}/new",
        {"jid": jid, "fun": fun, "arg": arg, "minions": minions, "tgt": "*", "tgt_type": "glob"},
        timeout=5,
        ack=True,
    )
    for minion, retcode in returns.items():
        sender.fire(
            f"salt/job/{jid}/ret/{minion}",
            {
                "cmd": "_return",
                "id": minion,
                "jid": jid,
                "fun": fun,
                "fun_args": arg,
                "return": "",
                "retcode": retcode,
                "success": retcode == 0,
            },
            timeout=5,
            ack=True,
        )


def test_prometheus_reads_the_job_counts(
    serves: Callable[..., ServeProcess],
    exporters: Callable[..., ExporterProcess],
    bus_config: Config,
    tmp_path: Path,
) -> None:
    serves(bus_config, *bus_flags(bus_config))
    exporter = exporters("--sock-dir", str(bus_config.sock_dir), "--metrics", "127.0.0.1:0")
    url = exporter.url()
    wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, "the exporter to subscribe", WAIT)
    assert json.loads(http_get(f"{url}/readyz")[1])["ready"] is True

    with Sender(bus_config) as sender:
        fire_job(sender, "20260101000000000001", "test.ping", [], {"m1": 0, "m2": 0})
        fire_job(sender, "20260101000000000002", "cmd.run", ["exit 3"], {"m1": 3})
        fire_job(sender, "20260101000000000003", "state.highstate", [], {"m1": 0, "m2": 2})
        sender.fire("salt/auth", {"id": "m1", "result": True}, timeout=5, ack=True)

    with prometheus(tmp_path / "prom", {"exporter": url.removeprefix("http://")}) as prom:
        prom.wait_for('up{job="exporter"}', 1)
        prom.wait_for('salt_new_job_total{function="test.ping"}', 1)
        prom.wait_for('salt_new_job_total{function="cmd.run"}', 1)
        prom.wait_for('salt_expected_responses_total{function="test.ping"}', 2)
        prom.wait_for("sum(salt_responses_total)", 5)
        assert prom.values("sum by (success) (salt_responses_total)") == {
            (("success", "true"),): 3.0,
            (("success", "false"),): 2.0,
        }
        assert prom.values("salt_function_responses_total") == {
            (("function", "test.ping"), ("success", "true")): 2.0,
            (("function", "cmd.run"), ("success", "false")): 1.0,
            (("function", "state.highstate"), ("state", "highstate"), ("success", "true")): 1.0,
            (("function", "state.highstate"), ("state", "highstate"), ("success", "false")): 1.0,
        }
        assert prom.values("salt_function_status") == {
            (("function", "state.highstate"), ("minion", "m1"), ("state", "highstate")): 1.0,
            (("function", "state.highstate"), ("minion", "m2"), ("state", "highstate")): 0.0,
        }
    assert exporter.stop() == 0


def test_the_exporter_waits_for_a_bus_and_is_not_ready_meanwhile(
    serves: Callable[..., ServeProcess],
    exporters: Callable[..., ExporterProcess],
    bus_config: Config,
) -> None:
    exporter = exporters(
        "--sock-dir", str(bus_config.sock_dir), "--metrics", "127.0.0.1:0", "--drop-label", "minion"
    )
    url = exporter.url()
    status, body = http_get(f"{url}/readyz")
    assert status == 503 and json.loads(body)["failed"] == ["bus"]
    assert http_get(f"{url}/healthz")[0] == 200
    serves(bus_config, *bus_flags(bus_config))
    wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, "the exporter to subscribe", WAIT)
    with Sender(bus_config) as sender:
        fire_job(sender, "20260101000000000004", "test.ping", [], {"m1": 0})
    deadline = time.monotonic() + WAIT
    while 'salt_responses_total{success="true"} 1.0' not in (text := http_get(f"{url}/metrics")[1]):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert "minion=" not in text
    assert exporter.stop() == 0


# -- a real Salt master with a minion -------------------------------------------------


class SaltMaster:
    """``salt-master`` and ``salt-minion`` of one Salt venv, on loopback ports,
    everything under ``root`` (a short directory: the unix socket paths)."""

    def __init__(self, version: str, root: Path, ipc_mode: str) -> None:
        self.bin = salt_python(version).parent
        self.root = root
        self.etc = root / "etc"
        self.etc.mkdir(parents=True)
        ports = [free_port() for _ in range(6)]
        common = {"root_dir": str(root), "user": "root", "log_level_logfile": "info"}
        master = common | {
            "pki_dir": str(root / "pki-m"),
            "cachedir": str(root / "cache-m"),
            "sock_dir": str(root / "sm"),
            "pidfile": str(root / "master.pid"),
            "log_file": str(root / "master.log"),
            "interface": "127.0.0.1",
            "publish_port": ports[0],
            "ret_port": ports[1],
            "auto_accept": True,
            "worker_threads": 2,
            "ipc_mode": ipc_mode,
            "tcp_master_pub_port": ports[2],
            "tcp_master_pull_port": ports[3],
            "tcp_master_publish_pull": ports[4],
            "tcp_master_workers": ports[5],
        }
        minion = common | {
            "id": MINION,
            "master": "127.0.0.1",
            "master_port": ports[1],
            "publish_port": ports[0],
            "pki_dir": str(root / "pki-n"),
            "cachedir": str(root / "cache-n"),
            "sock_dir": str(root / "sn"),
            "pidfile": str(root / "minion.pid"),
            "log_file": str(root / "minion.log"),
        }
        (self.etc / "master").write_text(json.dumps(master))
        (self.etc / "minion").write_text(json.dumps(minion))
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, daemon: str) -> None:
        # Its own session: Salt's daemons fork workers, stopped with it by group.
        self.processes.append(
            subprocess.Popen(
                [str(self.bin / daemon), "-c", str(self.etc), "-l", "quiet"],
                start_new_session=True,
                env=clean_env(),
            )
        )

    def salt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "salt"), "-c", str(self.etc), "--out", "json", "-t", "30", *args],
            capture_output=True,
            text=True,
            timeout=WAIT * 2,
            env=clean_env(),
            check=False,
        )

    def log(self) -> str:
        logs = [self.root / "master.log", self.root / "minion.log"]
        return "\n".join(p.read_text()[-2000:] for p in logs if p.exists())

    def stop(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(WAIT)
            # Forked workers left in the group go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


MINION = "metrics-minion"


@pytest.mark.parametrize(("version", "ipc_mode"), [("3007", "ipc"), ("3008", "tcp")])
def test_a_real_masters_jobs_through_prometheus(
    version: str,
    ipc_mode: str,
    exporters: Callable[..., ExporterProcess],
    sock_dir: Path,
    tmp_path: Path,
) -> None:
    master = SaltMaster(version, sock_dir / "s", ipc_mode)
    try:
        master.start("salt-master")
        bus = Config.load(master.etc / "master", env={}, overrides={"salt_version": version})
        listener = Listener(bus, f"salt/minion/{MINION}/start", resume=False)
        try:
            listener.connect(timeout=WAIT)
            master.start("salt-minion")
            started = listener.receive(timeout=WAIT * 2)
            assert started is not None, f"the minion did not start:\n{master.log()}"
        finally:
            listener.close()

        exporter = exporters(
            "--config",
            str(master.etc / "master"),
            "--salt-version",
            version,
            "--metrics",
            "127.0.0.1:0",
            "--status-function",
            "test.ping",
            "--status-function",
            "cmd.run",
        )
        url = exporter.url()
        wait_until(lambda: http_get(f"{url}/readyz")[0] == 200, "the exporter to subscribe", WAIT)

        ping = master.salt(MINION, "test.ping")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert json.loads(ping.stdout) == {MINION: True}
        failing = master.salt(MINION, "cmd.run", "exit 3", "python_shell=True")
        assert failing.returncode != 0, failing.stdout

        with prometheus(tmp_path / "prom", {"exporter": url.removeprefix("http://")}) as prom:
            prom.wait_for('salt_new_job_total{function="test.ping"}', 1)
            prom.wait_for('salt_new_job_total{function="cmd.run"}', 1)
            prom.wait_for("sum(salt_responses_total)", 2)
            assert prom.values("sum by (minion, success) (salt_responses_total)") == {
                (("minion", MINION), ("success", "true")): 1.0,
                (("minion", MINION), ("success", "false")): 1.0,
            }
            assert prom.values("salt_function_status") == {
                (("function", "test.ping"), ("minion", MINION)): 1.0,
                (("function", "cmd.run"), ("minion", MINION)): 0.0,
            }
            assert prom.values("salt_expected_responses_total") == {
                (("function", "test.ping"),): 1.0,
                (("function", "cmd.run"),): 1.0,
            }
        assert exporter.stop() == 0
    finally:
        master.stop()
