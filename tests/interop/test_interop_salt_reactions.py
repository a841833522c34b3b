"""Salt's own reactions against a real salt-master and salt-minion: `saltbus react`
reads the master's bus (Salt's publisher), an event fired with `saltbus fire` runs
local (and the cmd alias), runner and wheel reactions through the master, and the
job's return comes back on the bus. A caller reaction runs against the minion, its
reactor on the minion's bus. One master and minion per Salt generation."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from saltbus import Listener
from saltbus.event import Event
from tests.interop.buses import run_saltbus
from tests.interop.salt_master_support import SaltMaster, late_master, salt_master_and_minion
from tests.interop.salt_peer_client import SALT_VERSIONS
from tests.serve_support import SALTBUS, clean_env

WAIT = 60.0

REACTIONS = """\
ping:
  local.test.ping:
    - tgt: {{ data['minion'] }}
echo:
  cmd.cmd.run:
    - tgt: '*'
    - tgt_type: glob
    - arg:
      - echo {{ data['word'] }}
args:
  runner.test.arg:
    - args:
      - who: {{ data['minion'] }}
keys:
  wheel.key.list_all: []
batched:
  local.test.echo:
    - tgt: '*'
    - arg: [batched]
    - batch: 1
"""
RETRIED = """\
keys:
  wheel.key.list_all: []
  retry: {attempts: 120, delay: 1s, factor: 1}
gone:
  wheel.key.list_all: []
  retry: {attempts: 2, delay: 200ms}
"""
WARM = "warm:\n  event.send:\n    - tag: app/warmed\n"


@pytest.fixture(scope="module", params=SALT_VERSIONS)
def master(request: pytest.FixtureRequest) -> Iterator[SaltMaster]:
    with salt_master_and_minion(request.param) as running:
        yield running


class React:
    """`saltbus react`, its stderr read by a thread."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [str(SALTBUS), "react", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while not any(text in line for line in self.lines):
            assert self.popen.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def stop(self) -> int:
        self.popen.terminate()
        try:
            return self.popen.wait(WAIT)
        finally:
            self._reader.join(5)
            assert self.popen.stdout is not None
            self.popen.stdout.close()


def salt_env(master: SaltMaster) -> dict[str, str]:
    """Salt's venv first on PATH: saltbus finds Salt's python from salt-master."""
    bin_dir = str(master.python.parent)
    return clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def master_with_reactor(master: SaltMaster, tmp_path: Path, **extra: Any) -> Path:
    """The master's own config file, with a reactor: section (as Salt's would have)."""
    (tmp_path / "salt.sls").write_text(REACTIONS)
    (tmp_path / "warm.sls").write_text(WARM)
    conf = yaml.safe_load(master.config_file.read_text())
    conf["reactor"] = [
        {"app/salt": [str(tmp_path / "salt.sls")]},
        {"app/warm": [str(tmp_path / "warm.sls")]},
    ]
    conf.update(extra)
    path = tmp_path / "master"
    path.write_text(yaml.safe_dump(conf))
    return path


def fire(master: SaltMaster, tag: str, bus: tuple[str, ...] = (), **data: Any) -> None:
    """`saltbus fire` on the master's bus, or on the one ``bus`` flags name."""
    subprocess.run(
        [str(SALTBUS), "fire", tag, json.dumps(data), "--salt-version", master.version]  # noqa: RUF005
        + list(bus or ("--sock-dir", str(master.sock_dir))),
        check=True,
        timeout=WAIT,
        env=clean_env(),
        capture_output=True,
    )


def warm_up(master: SaltMaster, listener: Listener, bus: tuple[str, ...] = ()) -> None:
    """Salt's publisher confirms no subscription: fire until the reactor hears."""
    deadline = time.monotonic() + WAIT
    while True:
        fire(master, "app/warm", bus)
        event = listener.receive(1.0)
        while event is not None and event.tag != "saltbus/reactor/warm/ret":
            event = listener.receive(1.0)
        if event is not None:
            return
        assert time.monotonic() < deadline, "the reactor never heard app/warm"


def salt_rets(events: list[Event]) -> list[Event]:
    return [
        e
        for e in events
        if e.tag.startswith("saltbus/reactor/")
        and e.tag.endswith("/ret")
        and e.data.get("reaction") != "warm"
    ]


def collect(listener: Listener, done: Any) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + WAIT
    while not done(events):
        assert time.monotonic() < deadline, [e.tag for e in events]
        event = listener.receive(1.0)
        if event is not None:
            events.append(event)
    return events


def is_job_ret(event: Event) -> bool:
    return event.tag.startswith("salt/job/") and "/ret/" in event.tag


def test_local_runner_and_wheel_reactions(master: SaltMaster, tmp_path: Path) -> None:
    conf = master_with_reactor(master, tmp_path)
    minion = master.minion_id
    config = master.bus_config()
    with Listener(config, "") as listener:
        listener.connect(WAIT)
        react = React("--config", str(conf), "--salt-version", master.version, env=salt_env(master))
        try:
            react.wait_for("running on the")
            warm_up(master, listener)
            fire(master, "app/salt", minion=minion, word="hello")

            def rets(events: list[Event]) -> dict[str, dict[str, Any]]:
                return {
                    e.data["reaction"]: e.data
                    for e in events
                    if e.tag.startswith("saltbus/reactor/") and e.tag.endswith("/ret")
                }

            def finished(events: list[Event]) -> bool:
                got = rets(events)
                if not {"ping", "echo", "args", "keys", "batched"} <= got.keys():
                    return False
                returned = {e.data.get("jid") for e in events if is_job_ret(e)}
                return {got["ping"].get("jid"), got["echo"].get("jid")} <= returned

            events = collect(listener, finished)
        finally:
            assert react.stop() == 0, "".join(react.lines)
    got = rets(events)
    for name in ("ping", "echo", "args", "keys"):
        assert got[name]["success"] is True, got[name]
        assert got[name]["jid"], got[name]
    assert got["ping"]["result"]["minions"] == [minion]
    assert got["echo"]["action"] == "cmd.cmd.run"
    assert got["args"]["result"]["return"]["kwargs"]["who"] == minion
    assert minion in got["keys"]["result"]["return"]["minions"]
    # batch: the reaction waited for its batches and has the minions' returns.
    assert got["batched"]["success"] is True, got["batched"]
    assert got["batched"]["result"]["return"] == {minion: "batched"}
    # One helper for all these reactions: Salt's interpreter started once.
    assert sum("reached through" in line for line in react.lines) == 1, react.lines
    # The minions' returns of the local jobs, on the master's bus.
    job_rets = {e.data["jid"]: e.data for e in events if is_job_ret(e)}
    assert job_rets[got["ping"]["jid"]]["return"] is True
    assert job_rets[got["ping"]["jid"]]["id"] == minion
    assert job_rets[got["echo"]["jid"]]["return"] == "hello"
    # The runner's own events: Salt fired salt/run/<jid>/ret for it.
    assert any(e.tag == f"salt/run/{got['args']['jid']}/ret" for e in events)


def test_check_says_how_salt_is_reached(master: SaltMaster, tmp_path: Path) -> None:
    conf = master_with_reactor(master, tmp_path)
    done = run_saltbus(
        "react", "--check", "--config", str(conf), timeout=WAIT, env=salt_env(master)
    )
    assert done.returncode == 0, done.stderr
    salt_line = done.stdout.strip().splitlines()[-1]
    assert salt_line.startswith(f"Salt's reactions: Salt {master.version}.")
    assert f"the interpreter of {master.python.parent / 'salt-master'}" in salt_line
    assert f"master config {conf}" in salt_line
    port = yaml.safe_load(conf.read_text())["ret_port"]
    assert salt_line.endswith(f"master answering on 127.0.0.1:{port}")
    assert "ping: local.test.ping ok (Salt's local client" in done.stdout


def test_a_master_that_does_not_answer(master: SaltMaster, tmp_path: Path) -> None:
    """A master config whose master is not running: --check fails in one line,
    and a reaction gives a ret event with success false and the reason."""
    free = __import__("socket").socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    dead = tmp_path / "dead-master"
    conf = yaml.safe_load(master.config_file.read_text())
    conf["ret_port"] = dead_port
    dead.write_text(yaml.safe_dump(conf))
    saltbus_conf = master_with_reactor(
        master, tmp_path, salt_master_config=str(dead), salt_python=str(master.python)
    )
    done = run_saltbus("react", "--check", "--config", str(saltbus_conf), timeout=WAIT)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert "the Salt master is not running: nothing answers on 127.0.0.1:" in line
    assert str(dead_port) in line and str(dead) in line
    with Listener(master.bus_config(), "saltbus/reactor/") as listener:
        listener.connect(WAIT)
        react = React(
            "--config", str(saltbus_conf), "--salt-version", master.version, env=clean_env()
        )
        try:
            react.wait_for("running on the")
            warm_up(master, listener)
            fire(master, "app/salt", minion=master.minion_id, word="x")
            events = collect(listener, lambda got: len(salt_rets(got)) >= 5)
        finally:
            assert react.stop() == 0
    for event in salt_rets(events):
        assert event.data["success"] is False
        assert f"nothing answers on 127.0.0.1:{dead_port}" in event.data["error"]


def test_retried_until_a_master_started_meanwhile_answers(
    master: SaltMaster, tmp_path: Path
) -> None:
    """retry: against a master that is down: `gone` gives up after its two
    attempts, each an outcome event with the reason; `keys` is retried until the
    master, started during its retries, answers, and then succeeds."""
    (tmp_path / "retried.sls").write_text(RETRIED)
    with late_master(master.version) as late:
        conf_file = master_with_reactor(
            master,
            tmp_path,
            salt_master_config=str(late.config_file),
            salt_python=str(master.python),
        )
        conf = yaml.safe_load(conf_file.read_text())
        conf["reactor"].append({"app/retry": [str(tmp_path / "retried.sls")]})
        conf_file.write_text(yaml.safe_dump(conf))
        with Listener(master.bus_config(), "saltbus/reactor/") as listener:
            listener.connect(WAIT)
            react = React(
                "--config", str(conf_file), "--salt-version", master.version, env=clean_env()
            )
            try:
                react.wait_for("running on the")
                warm_up(master, listener)
                fire(master, "app/retry")

                def by(events: list[Event], name: str) -> list[dict[str, Any]]:
                    return [e.data for e in salt_rets(events) if e.data["reaction"] == name]

                events = collect(
                    listener, lambda got: len(by(got, "gone")) == 2 and len(by(got, "keys")) >= 2
                )
                late.start()
                events += collect(
                    listener, lambda got: any(r["success"] for r in by(events + got, "keys"))
                )
            finally:
                assert react.stop() == 0, "".join(react.lines)
    down = f"the Salt master is not running: nothing answers on 127.0.0.1:{late.ret_port}"
    gone = by(events, "gone")
    assert [(r["attempt"], r.get("retrying_in"), r.get("gave_up")) for r in gone] == [
        (1, 0.2, None),
        (2, None, True),
    ]
    assert all(r["success"] is False and down in r["error"] for r in gone), gone
    keys = by(events, "keys")
    failed, succeeded = keys[:-1], keys[-1]
    assert [r["attempt"] for r in keys] == list(range(1, len(keys) + 1))
    # Until the master runs its port is closed; starting, it may time out once.
    assert all(r["success"] is False and r["retrying_in"] == 1.0 for r in failed), failed
    assert down in failed[0]["error"]
    assert succeeded["success"] is True and succeeded["attempts"] == 120, succeeded
    assert "minions" in succeeded["result"]["return"] and succeeded["jid"]
    print(f"keys: succeeded at attempt {succeeded['attempt']}, after the master started")


def test_caller_reaction_on_the_minions_bus(master: SaltMaster, tmp_path: Path) -> None:
    """`saltbus react` on the minion's bus with the minion's own config file:
    caller reactions run the minion's modules, as salt-call does."""
    (tmp_path / "caller.sls").write_text(
        "grain:\n  caller.grains.get:\n    - args: [id]\n"
        "echo:\n  caller.test.arg:\n    - args:\n      - word: '{{ data['word'] }}'\n"
    )
    (tmp_path / "warm.sls").write_text(WARM)
    conf = yaml.safe_load((master.root / "minion").read_text())
    conf["reactor"] = [
        {"app/caller": [str(tmp_path / "caller.sls")]},
        {"app/warm": [str(tmp_path / "warm.sls")]},
    ]
    conf.update(node="minion", salt_python=str(master.python))
    minion_conf = tmp_path / "minion"
    minion_conf.write_text(yaml.safe_dump(conf))
    config = master.bus_config(node="minion", id=master.minion_id, sock_dir=conf["sock_dir"])
    bus = ("--node", "minion", "--id", master.minion_id, "--sock-dir", conf["sock_dir"])
    with Listener(config, "saltbus/reactor/") as listener:
        listener.connect(WAIT)
        react = React(
            "--config", str(minion_conf), "--salt-version", master.version, env=clean_env()
        )
        try:
            react.wait_for("running on the")
            warm_up(master, listener, bus)
            fire(master, "app/caller", bus, word="hi")
            events = collect(listener, lambda got: len(salt_rets(got)) >= 2)
        finally:
            assert react.stop() == 0, "".join(react.lines)
    got = {e.data["reaction"]: e.data for e in salt_rets(events)}
    assert got["grain"]["success"] is True, got["grain"]
    assert got["grain"]["result"] == {"return": master.minion_id}
    assert got["echo"]["result"]["return"]["kwargs"]["word"] == "hi"
    assert got["echo"]["action"] == "caller.test.arg"
