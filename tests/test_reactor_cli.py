"""`saltbus react` and `saltbus serve` with a `reactor:` section, as real processes:
commands, HTTP posts, conditions, throttling, failures, refusals, the loop guard,
overflow, reload, catch-up after 1,000 missed events, and a configuration in the
form of Salt's reactor documentation."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from saltbus import Config, Listener, Sender
from saltbus.cli import react as react_command
from saltbus.cli import stats as stats_command
from saltbus.cli.main import build_parser
from saltbus.client.admin import fetch_stats
from saltbus.client.aio import AsyncClient
from saltbus.event import Event
from saltbus.server import Server
from tests.interop.salt_peer_client import SALT_VERSIONS, salt_fire, salt_publisher
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until

WAIT = 30.0


class Proc:
    """A saltbus command whose stderr a thread keeps reading."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [str(SALTBUS), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.popen.poll() is not None:
                self._reader.join(5)
                if text in self.stderr:
                    return
                raise AssertionError(f"exited {self.popen.returncode}: {self.stderr}")
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr}"
            time.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            code = self.popen.wait(WAIT)
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT)
        self._reader.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def react(config: Config, conf: Path, *extra: str) -> Proc:
    proc = Proc("react", "--config", str(conf), *bus_flags(config), *extra)
    try:
        proc.wait_for("running on the")
    except BaseException:
        proc.close()
        raise
    return proc


def reactor_conf(tmp_path: Path, files: dict[str, str], reactor: str, extra: str = "") -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    conf = tmp_path / "reactor.conf"
    conf.write_text(f"reactor:\n{reactor}{extra}")
    return conf


@pytest.fixture
def reports(bus_config: Config) -> Iterator[Listener]:
    """The reactor's events, for a test whose bus is already up."""
    listener = Listener(bus_config, "saltbus/reactor/")
    yield listener
    listener.close()


def collect(listener: Listener, count: int, timeout: float = WAIT) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(events)} of {count}: {events}"
        event = listener.receive(remaining)
        if event is not None:
            events.append(event)
    return events


def nothing_more(listener: Listener, seconds: float = 0.5) -> None:
    extra = listener.receive(seconds)
    assert extra is None, f"unexpected {extra}"


def fire(config: Config, tag: str, data: dict[str, Any] | None = None) -> Event:
    with Sender(config) as sender:
        return sender.fire(tag, data or {}, ack=True)


# -- the actions -------------------------------------------------------------------


def test_a_reaction_runs_a_command_that_writes_a_file(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    out = tmp_path / "deployed"
    conf = reactor_conf(
        tmp_path,
        {
            "deploy.sls": "write_marker:\n  cmd.run:\n"
            f"    - cmd: [sh, -c, \"echo {{{{ data['version'] }}}} > {out}\"]\n"
            "    - timeout: 10\n"
        },
        "  - 'app/deploy/*':\n    - deploy.sls\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            sent = fire(bus_config, "app/deploy/web1", {"version": "1.2"})
            (ret,) = collect(reports, 1)
        finally:
            assert proc.stop() == 0
    assert out.read_text() == "1.2\n"
    assert ret.tag == "saltbus/reactor/write_marker/ret"
    assert ret.data["success"] is True
    assert ret.data["result"] == {"retcode": 0, "stdout": "", "stderr": ""}
    assert (ret.data["trigger_tag"], ret.data["trigger_seq"]) == ("app/deploy/web1", sent.seq)
    assert "reactor stopped" in proc.stderr


class Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_reaction_posts_to_a_local_http_server(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    handler = type("H", (Hook,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/deploy"
    conf = reactor_conf(
        tmp_path,
        {
            "hook.sls": "notify:\n  http.post:\n    - args:\n"
            f"      - url: {url}\n"
            "      - json: {text: \"deployed {{ data['version'] }}\"}\n"
            "      - headers: {X-From: saltbus}\n"
        },
        "  - 'app/deploy/*': [hook.sls]\n",
    )
    try:
        with ServeProcess.for_bus(bus_config):
            reports.connect(5)
            proc = react(bus_config, conf)
            try:
                fire(bus_config, "app/deploy/web1", {"version": "2.0"})
                (ret,) = collect(reports, 1)
            finally:
                proc.stop()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert ret.data["success"] is True and ret.data["result"]["status"] == 201
    assert handler.bodies == [b'{"text": "deployed 2.0"}']


def test_a_condition_filters(bus_config: Config, tmp_path: Path, reports: Listener) -> None:
    conf = reactor_conf(
        tmp_path,
        {
            "w.sls": "crit_only:\n  event.send: [{tag: 'page/{{ data.n }}'}]\n"
            "  when: data.level == 'crit'\n"
        },
        "  - 'log/*': [w.sls]\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            for n in range(6):
                fire(bus_config, f"log/{n}", {"n": n, "level": ["info", "crit"][n % 2]})
            rets = collect(reports, 3)
            nothing_more(reports)
        finally:
            proc.stop()
    assert sorted(e.data["result"]["tag"] for e in rets) == ["page/1", "page/3", "page/5"]


def test_throttling_over_a_burst_of_100(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    conf = reactor_conf(
        tmp_path,
        {
            "t.sls": "once:\n  event.send: [{tag: t/once}]\n  once_within: 1h\n"
            "per_host:\n  event.send: [{tag: t/host}]\n  once_within: 1h\n  group_by: [host]\n"
        },
        "  - 'burst/*': [t.sls]\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                for n in range(100):
                    sender.fire(f"burst/{n}", {"host": f"web{n % 4}"})
            rets = collect(reports, 5)
            nothing_more(reports, 1.0)
        finally:
            proc.stop()
    counts: dict[str, int] = {}
    for e in rets:
        counts[e.data["reaction"]] = counts.get(e.data["reaction"], 0) + 1
    assert counts == {"once": 1, "per_host": 4}
    assert "throttled 195" in proc.stderr
    assert "skipped by once_within: once 99, per_host 96" in proc.stderr


def test_a_failing_action_and_a_salt_master_action_produce_error_events(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    conf = reactor_conf(
        tmp_path,
        {
            "f.sls": "broken:\n  cmd.run:\n    - cmd: [sh, -c, 'echo no >&2; exit 7']\n"
            "highstate:\n  local.state.apply:\n    - tgt: '{{ data.id }}'\n"
            "alias:\n  cmd.run:\n    - tgt: '*'\n    - arg: [uptime]\n"
        },
        "  - 'go': [f.sls]\n",
        f"salt_python: {tmp_path / 'no-python'}\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            fire(bus_config, "go", {"id": "web1"})
            rets = {e.data["reaction"]: e.data for e in collect(reports, 3)}
        finally:
            proc.stop()
    assert rets["broken"]["success"] is False
    assert rets["broken"]["error"] == "command exited with status 7"
    assert rets["broken"]["result"]["stderr"] == "no\n"
    # Salt's reactions (cmd.run with a tgt is Salt's alias) cannot reach Salt here.
    for name, function in (("highstate", "local.state.apply"), ("alias", "cmd.run")):
        assert rets[name]["success"] is False and rets[name]["action"] == function
        assert "salt_python" in rets[name]["error"] and "not an executable" in rets[name]["error"]


def test_the_loop_guard(bus_config: Config, tmp_path: Path, reports: Listener) -> None:
    conf = reactor_conf(
        tmp_path,
        {"l.sls": "echo:\n  event.send: [{tag: ping/again}]\n"},
        "  - 'ping/*': [l.sls]\n",
        "reactor_max_depth: 4\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            fire(bus_config, "ping/start")
            events = collect(reports, 5)
            nothing_more(reports)
        finally:
            proc.stop()
    assert sorted(e.tag for e in events) == ["saltbus/reactor/echo/ret"] * 4 + [
        "saltbus/reactor/loop"
    ]
    loop = next(e for e in events if e.tag == "saltbus/reactor/loop")
    assert loop.data["depth"] == 4 and loop.data["reactions"] == ["echo"]
    assert "loop guard" in proc.stderr


def test_a_full_queue_fires_overflow(bus_config: Config, tmp_path: Path, reports: Listener) -> None:
    conf = reactor_conf(
        tmp_path,
        {"s.sls": "slow:\n  cmd.run: [{cmd: [sleep, '0.3']}]\n"},
        "  - 'work': [s.sls]\n",
        "reactor_worker_threads: 1\nreactor_worker_hwm: 1\n",
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                for n in range(10):
                    sender.fire("work", {"n": n})
            events = []
            while (event := reports.receive(2.0)) is not None:
                events.append(event)
        finally:
            proc.stop()
    overflow = [e for e in events if e.tag == "saltbus/reactor/overflow"]
    rets = [e for e in events if e.tag == "saltbus/reactor/slow/ret"]
    dropped = sum(e.data["dropped"] for e in overflow)
    assert overflow and dropped > 0 and len(rets) + dropped == 10
    assert "queue full" in proc.stderr


# -- reload ----------------------------------------------------------------------------


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    conf = reactor_conf(
        tmp_path, {"r.sls": "old:\n  event.send: [{tag: x}]\n"}, "  - 'r': [r.sls]\n"
    )
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            # Queued work is kept across a reload: a slow reaction is running.
            (tmp_path / "r.sls").write_text("new:\n  event.send: [{tag: x}]\n")
            proc.popen.send_signal(signal.SIGHUP)
            (reload,) = collect(reports, 1)
            assert reload.tag == "saltbus/reactor/reload" and reload.data["success"]
            fire(bus_config, "r")
            assert collect(reports, 1)[0].tag == "saltbus/reactor/new/ret"

            (tmp_path / "r.sls").write_text("new:\n  event.send: [{tag: x}]\n  - broken\n")
            done = subprocess.run(
                [str(SALTBUS), "react", "--reload", "--config", str(conf), *bus_flags(bus_config)],
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert f"(pid {proc.popen.pid}) to reload" in done.stdout
            (failed,) = collect(reports, 1)
            assert failed.data["success"] is False
            assert f"{tmp_path / 'r.sls'}:3: YAML" in failed.data["error"]
            fire(bus_config, "r")
            assert collect(reports, 1)[0].tag == "saltbus/reactor/new/ret"
        finally:
            assert proc.stop() == 0
    assert "the running configuration stays" in proc.stderr and "r.sls:3" in proc.stderr


def test_reload_without_a_running_reactor(bus_config: Config, tmp_path: Path) -> None:
    conf = reactor_conf(tmp_path, {"r.sls": ""}, "  - 'r': [r.sls]\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--reload", "--config", str(conf), *bus_flags(bus_config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 1 and "no reactor runs under 'reactor'" in done.stderr


def test_reload_does_not_lose_queued_work(bus_config: Config, tmp_path: Path) -> None:
    out = tmp_path / "out"
    conf = reactor_conf(
        tmp_path,
        {
            "q.sls": "slow:\n  cmd.run: [{cmd: [sh, -c, "
            f"'sleep 0.05; echo {{{{ data.n }}}} >> {out}']}}]\n"
        },
        "  - 'q': [q.sls]\n",
        "reactor_worker_threads: 1\n",
    )
    with ServeProcess.for_bus(bus_config):
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                for n in range(20):
                    sender.fire("q", {"n": n})
            wait_until(out.exists, f"{out}", WAIT)
            for reloads in range(1, 4):  # one at a time: pending SIGHUPs coalesce
                proc.popen.send_signal(signal.SIGHUP)
                wait_until(
                    lambda n=reloads: proc.stderr.count("reloaded:") == n, f"reload {reloads}", WAIT
                )
            assert len(out.read_text().split()) < 20, "the reloads were not during the work"
            wait_until(lambda: len(out.read_text().split()) == 20, "20 lines", WAIT)
        finally:
            proc.stop()
    assert sorted(map(int, out.read_text().split())) == list(range(20))
    assert proc.stderr.count("reloaded:") == 3


# -- catch-up ------------------------------------------------------------------------


def test_catch_up_after_missing_1000_events_exactly_once(
    bus_config: Config, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    conf = reactor_conf(
        tmp_path,
        {"c.sls": f"count:\n  cmd.run:\n    - cmd: [sh, -c, 'echo {{{{ data.n }}}} >> {out}']\n"},
        "  - 'n/*': [c.sls]\n",
    )
    lines = lambda: out.read_text().split() if out.exists() else []  # noqa: E731
    with ServeProcess.for_bus(bus_config, "--journal", "batch"):
        proc = react(bus_config, conf)
        with Sender(bus_config) as sender:
            for n in range(10):
                sender.fire(f"n/{n}", {"n": n})
        wait_until(lambda: len(lines()) == 10, "10 lines", WAIT)
        assert proc.stop() == 0  # the reactor is down
        with Sender(bus_config) as sender:
            for n in range(10, 1010):
                sender.fire(f"n/{n}", {"n": n}, ack=n == 1009)
        started = time.monotonic()
        proc = react(bus_config, conf)
        try:
            # It says how far back it reaches: the 1,000 and the ret events after its mark.
            found = re.search(
                r"catching up (\d+) events from seq (\d+) to (\d+) \(oldest ", proc.stderr
            )
            assert found, proc.stderr
            count, first, last = map(int, found.groups())
            assert count >= 1000 and last - first + 1 == count
            wait_until(lambda: len(lines()) >= 1010, "1,010 lines", 120)
            took = time.monotonic() - started
            time.sleep(0.5)
        finally:
            assert proc.stop() == 0
    handled = list(map(int, lines()))
    assert sorted(handled) == list(range(1010)), "each event handled exactly once"
    print(f"caught up 1000 missed events (cmd.run each) in {took:.2f} s")


def test_catch_up_after_kill_9_loses_nothing(bus_config: Config, tmp_path: Path) -> None:
    out = tmp_path / "out"
    conf = reactor_conf(
        tmp_path,
        {"c.sls": f"count:\n  cmd.run: [{{cmd: [sh, -c, 'echo {{{{ data.n }}}} >> {out}']}}]\n"},
        "  - 'n': [c.sls]\n",
    )
    lines = lambda: out.read_text().split() if out.exists() else []  # noqa: E731
    with ServeProcess.for_bus(bus_config):
        proc = react(bus_config, conf)
        with Sender(bus_config) as sender:
            for n in range(300):
                sender.fire("n", {"n": n})
        wait_until(lambda: len(lines()) >= 50, "50 lines", WAIT)
        proc.stop(signal.SIGKILL)
        proc = react(bus_config, conf)
        try:
            wait_until(lambda: set(map(int, lines())) == set(range(300)), "all 300 lines", 60)
        finally:
            proc.stop()
    # At least once: what ran after the last saved position (in flight, or done
    # within the last save interval) runs again; nothing is lost.
    again = len(lines()) - 300
    assert 0 <= again < 300
    print(f"after kill -9: 300 events, {again} reactions ran twice")


# -- Salt's documentation, and serve -----------------------------------------------------

SALT_DOC_MASTER = """\
reactor:                            # Master config section "reactor"
  - 'salt/minion/*/start':          # Match tag "salt/minion/*/start"
    - reactor/start.sls             # Things to do when a minion starts
    - reactor/monitor.sls           # Other things to do
  - 'salt/cloud/*/destroyed':       # Globs can be used to matching tags
    - reactor/destroy/*.sls         # Globs can be used to match file names
"""


def salt_doc_files(out: Path) -> dict[str, str]:
    return {
        "reactor/start.sls": f"""\
{{% if data['id'] == 'mysql1' %}}
highstate_run:
  local.state.highstate:
    - tgt: mysql1
{{% endif %}}
record_start:
  cmd.run:
    - args:
      - cmd: ["sh", "-c", "echo started {{{{ data['id'] }}}} >> {out}"]
""",
        "reactor/monitor.sls": f"""\
spin_up_more_web_machines:
  runner.cloud.profile:
    - prof: centos_6
    - instances:
      - web11       # These VM names would be generated via Jinja in a
      - web12       # real-world example.
tell_monitoring:
  cmd.run:
    - cmd: ["sh", "-c", "echo monitor {{{{ tag }}}} >> {out}"]
    - timeout: 10
""",
        "reactor/destroy/clean.sls": f"""\
clean_tmp:
  local.cmd.run:
    - tgt: '*'
    - arg:
      - rm -rf /tmp/*
forget:
  cmd.run:
    - cmd: ["sh", "-c", "echo destroyed {{{{ data['name'] }}}} >> {out}"]
""",
        "reactor/destroy/key.sls": """\
{# A destroyed VM's key goes too #}
minion_remove:
  wheel.key.delete:
    - match: {{ data['name'] }}
""",
    }


def test_a_configuration_in_the_form_of_salts_documentation(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    out = tmp_path / "out"
    conf = reactor_conf(tmp_path, salt_doc_files(out), "")
    conf.write_text(SALT_DOC_MASTER + f"salt_python: {tmp_path / 'no-python'}\n")
    with ServeProcess.for_bus(bus_config):
        reports.connect(5)
        proc = react(bus_config, conf)
        try:
            fire(bus_config, "salt/minion/mysql1/start", {"id": "mysql1"})
            first = {e.data["reaction"]: e.data for e in collect(reports, 4)}
            fire(bus_config, "salt/cloud/web9/destroyed", {"name": "web9"})
            second = {e.data["reaction"]: e.data for e in collect(reports, 3)}
            nothing_more(reports)
        finally:
            proc.stop()
    ok = {name for name, ret in (first | second).items() if ret["success"]}
    # Salt's reactions fail with the reason: no Salt here (real Salt: tests/interop).
    unreachable = {
        name for name, ret in (first | second).items() if "salt_python" in ret.get("error", "")
    }
    assert ok == {"record_start", "tell_monitoring", "forget"}
    assert unreachable == {
        "highstate_run",
        "spin_up_more_web_machines",
        "clean_tmp",
        "minion_remove",
    }
    assert sorted(out.read_text().splitlines()) == [
        "destroyed web9",
        "monitor salt/minion/mysql1/start",
        "started mysql1",
    ]


def test_serve_runs_the_reactor_in_process(
    bus_config: Config, tmp_path: Path, reports: Listener
) -> None:
    out = tmp_path / "out"
    conf = reactor_conf(
        tmp_path,
        {"s.sls": f"mark:\n  cmd.run: [{{cmd: [sh, -c, 'echo {{{{ data.v }}}} > {out}']}}]\n"},
        "  - 'app/*': [s.sls]\n",
    )
    with ServeProcess.for_bus(bus_config, "--config", str(conf)) as server:
        server.wait_for_log("reactor 'reactor' running")
        reports.connect(5)
        sent = fire(bus_config, "app/x", {"v": "served"})
        (ret,) = collect(reports, 1)
        assert ret.data["success"] and out.read_text() == "served\n"
        # The journal keeps what the reactor has not handled; it has handled this.
        assert sent.seq is not None
        holds = lambda: fetch_stats(bus_config)["journal_holds"]  # noqa: E731
        wait_until(lambda: holds().get("reactor", 0) >= sent.seq, "the reactor's hold", WAIT)
        assert set(holds()) == {"reactor"}
        # `saltbus react --reload` finds the reactor inside serve.
        done = subprocess.run(
            [str(SALTBUS), "react", "--reload", "--config", str(conf), *bus_flags(bus_config)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert collect(reports, 1)[0].tag == "saltbus/reactor/reload"
        assert server.stop() == 0
    assert "reactor stopped" in server.log


def test_a_reactor_in_serve_counts_its_skips_in_saltbus_stats(
    bus_config: Config, tmp_path: Path
) -> None:
    """In process: serve's reactor, started as serve starts it, given the server."""
    conf = reactor_conf(
        tmp_path,
        {
            "r.sls": "never:\n  event.send: [{tag: x}]\n  when: data.n > 99\n"
            "once:\n  event.send: [{tag: y}]\n  once_within: 1h\n"
            "later:\n  cmd.run: [{cmd: ['false']}]\n  retry: {attempts: 2, delay: 1h}\n"
        },
        "  - 's/*': [r.sls]\n",
    )
    flags = [*bus_flags(bus_config), "--config", str(conf)]
    config = Config.load(conf, env={}, overrides={"sock_dir": bus_config.sock_dir})
    config = config.replace(data_dir=bus_config.data_dir)

    async def main() -> tuple[dict[str, Any], str]:
        async with Server(config) as server:
            reactor = await react_command.start_alongside(
                config, build_parser().parse_args(["serve", *flags]), server
            )
            try:
                async with AsyncClient(config) as client:
                    for n in range(3):
                        await client.fire("s/x", {"n": n}, ack=True)
                deadline = time.monotonic() + WAIT
                while (
                    reactor.stats.throttled < 2
                    or reactor.stats.filtered < 3
                    or reactor.stats.retried < 3
                ):
                    assert time.monotonic() < deadline, reactor.stats
                    await asyncio.sleep(0.02)
                raw = await asyncio.to_thread(fetch_stats, config, 5.0)
                out = io.StringIO()
                args = build_parser().parse_args(["stats", "--sock-dir", str(config.sock_dir)])
                await asyncio.to_thread(stats_command.run, args, out)
            finally:
                await reactor.stop()
        return raw, out.getvalue()

    raw, shown = asyncio.run(main())
    assert raw["reactor"]["skipped_by_when"] == {"never": 3}
    assert raw["reactor"]["skipped_by_throttle"] == {"once": 2}
    assert raw["reactor"]["succeeded"] == 1
    assert "  skipped (when: false): never 3\n" in shown
    assert "  skipped (once_within): once 2\n" in shown
    assert raw["reactor"]["retries_waiting"] == 3
    assert "  retry: 3 failed runs run again, 0 gave up, 3 waiting\n" in shown


def test_help_explains_with_an_example() -> None:
    done = subprocess.run(
        [str(SALTBUS), "react", "--help"], capture_output=True, text=True, timeout=WAIT, check=True
    )
    expected = ["reactor:", "cmd.run", "event.send", "http.post", "python", "once_within"]
    expected += ["group_by", "when:", "local.FUN", "runner.FUN", "wheel.FUN", "salt_python"]
    expected += ["--reload", "catch", "SIGHUP", "reactor_scope", "--test TAG"]
    for text in expected:
        assert text in done.stdout


# -- against Salt's own bus ------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("version", SALT_VERSIONS)
def test_react_on_a_salt_masters_bus(version: str, sock_dir: Path, tmp_path: Path) -> None:
    """Salt's publisher and Salt's firing client; saltbus only reacts."""
    out = tmp_path / "out"
    conf = reactor_conf(
        tmp_path,
        {
            "r.sls": f"mark:\n  cmd.run: [{{cmd: [sh, -c, 'echo {{{{ data.v }}}} > {out}']}}]\n"
            "tell:\n  event.send: {tag: app/seen, data: {v: '{{ data.v }}'}}\n"
        },
        "  - 'app/go': [r.sls]\n",
    )
    config = Config.load(
        env={},
        overrides={"sock_dir": sock_dir, "data_dir": tmp_path / "data", "salt_version": version},
    )
    with salt_publisher(version, sock_dir):
        listener = Listener(config, "app/seen")
        listener.connect(5)
        proc = react(config, conf, "--salt-version", version)
        try:
            # A Salt publisher confirms no subscription: fire until the reactor hears.
            deadline = time.monotonic() + WAIT
            while not out.exists():
                assert time.monotonic() < deadline, proc.stderr
                salt_fire(version, sock_dir, "app/go", {"v": version})
                time.sleep(0.2)
            seen = listener.receive(WAIT)
        finally:
            listener.close()
            assert proc.stop() == 0
    assert out.read_text() == f"{version}\n"
    assert seen is not None and seen.data["v"] == version and seen.seq is None
    assert "catching up" not in proc.stderr  # no journal on Salt's bus: nothing to resume
