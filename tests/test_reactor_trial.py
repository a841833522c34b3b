"""`saltbus react --test TAG [DATA]` (saltbus.reactor.trial): what would run for
one event, on a configuration in the form of Salt's reactor documentation, and
why each reaction that would not run does not (glob, when:, scope, loop guard);
nothing is run and no bus is needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from saltbus import Config, Sender
from tests.serve_support import SALTBUS, bus_flags, clean_env

WAIT = 30.0

MASTER = """\
reactor:
  - 'salt/minion/*/start':
    - /REACTOR/start.sls
  - 'salt/cloud/*/destroyed':
    - /REACTOR/destroy.sls
"""
START = """\
{% if data['id'] == 'mysql1' %}
highstate_run:
  local.state.apply:
    - tgt: mysql1
{% endif %}
install_zsh:
  local.state.single:
    - tgt: 'kernel:Linux'
    - tgt_type: grain
    - args:
      - fun: pkg.installed
      - name: zsh
      - fromrepo: updates
page:
  http.post:
    - url: https://hooks.example.com/start
  when: data['id'].startswith('db')
  once_within: 10m
  group_by: [id]
"""
DESTROY = """\
minion_remove:
  wheel.key.delete:
    - match: {{ data['name'] }}
  retry: {attempts: 3, delay: 5s}
"""


def react_test(
    tmp_path: Path, *args: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    reactor = tmp_path / "reactor"
    reactor.mkdir(exist_ok=True)
    (reactor / "start.sls").write_text(START)
    (reactor / "destroy.sls").write_text(DESTROY)
    conf = tmp_path / "master"
    conf.write_text(MASTER.replace("/REACTOR", str(reactor)))
    return subprocess.run(
        [str(SALTBUS), "react", "--config", str(conf)]  # noqa: RUF005
        + list(flags or ("--sock-dir", str(tmp_path / "nobus")))
        + list(args if args[0].startswith("--") else ("--test", *args)),
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
        check=False,
    )


def test_shows_the_local_state_apply_it_would_run(tmp_path: Path) -> None:
    done = react_test(tmp_path, "salt/minion/mysql1/start", "id=mysql1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == 'event salt/minion/mysql1/start {"id": "mysql1"}'
    assert "'salt/minion/*/start': matches" in lines
    assert f"  {tmp_path / 'reactor' / 'start.sls'}:" in lines
    assert (
        "    highstate_run (line 2): WOULD RUN local state.apply() on minions 'mysql1' (glob)"
    ) in lines
    assert (
        '    install_zsh (line 6): WOULD RUN local state.single(fun="pkg.installed", '
        'name="zsh", fromrepo="updates") on minions \'kernel:Linux\' (grain)'
    ) in lines
    assert "    page (line 14): not run: when: data['id'].startswith('db') is false" in lines
    assert (
        "'salt/cloud/*/destroyed': no match (tag 'salt/minion/mysql1/start' does not "
        "match this glob)"
    ) in lines
    # Nothing ran: the bus directory was never made.
    assert not (tmp_path / "nobus").exists()


def test_jinja_conditions_once_within_and_salt_runner_forms(tmp_path: Path) -> None:
    done = react_test(tmp_path, "salt/minion/db2/start", '{"id": "db2"}')
    assert done.returncode == 0, done.stderr
    assert "highstate_run" not in done.stdout  # {% if %} left it out for this event
    assert (
        '    page (line 14): WOULD RUN http.post {"backoff": 0.5, "headers": {}, '
        '"retries": 3, "timeout": 10.0, "url": "https://hooks.example.com/start"} '
        "[unless it ran within the last 600 s per id: once_within]"
    ) in done.stdout.splitlines()
    done = react_test(tmp_path, "salt/cloud/web9/destroyed", "name=web9")
    assert (
        '    minion_remove (line 1): WOULD RUN wheel key.delete(match="web9") on the Salt master'
        " [retry: 3 attempts, waiting 5 s x 2 (at most 60 s) between them]"
    ) in done.stdout.splitlines()


def test_imported_events_and_the_loop_guard_say_why_not(tmp_path: Path) -> None:
    origin = json.dumps({"id": "mysql1", "_saltbus_origin": {"node": "b", "seq": 1, "epoch": 1}})
    done = react_test(tmp_path, "salt/minion/mysql1/start", origin)
    assert (
        "    highstate_run (line 2): not run: imported from node b (reactor_scope local: "
        "that node's reactor runs it)"
    ) in done.stdout.splitlines()
    deep = json.dumps({"id": "x", "_saltbus_reactor": {"depth": 5, "chain": []}})
    done = react_test(tmp_path, "salt/minion/x/start", deep)
    assert "install_zsh (line 6): not run: the loop guard (the chain is 5 reactions deep" in (
        done.stdout
    )


def test_data_without_test_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "c"
    conf.write_text("reactor: []\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--config", str(conf), "id=1"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "saltbus: error: unexpected DATA 'id=1': DATA goes with --test TAG"
    )


@pytest.mark.usefixtures("publisher")
def test_an_event_from_the_journal(tmp_path: Path, bus_config: Config) -> None:
    with Sender(bus_config) as sender:
        seq = sender.fire("salt/minion/mysql1/start", {"id": "mysql1"}, ack=True).seq
    assert seq is not None
    flags = tuple(bus_flags(bus_config))
    done = react_test(tmp_path, "--test-seq", str(seq), flags=flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('event salt/minion/mysql1/start {"_stamp": ')
    assert "highstate_run (line 2): WOULD RUN local state.apply()" in done.stdout
    done = react_test(tmp_path, "--test-seq", str(seq + 100), flags=flags)
    assert done.returncode == 2
    assert f"no event with seq {seq + 100} in " in done.stderr


def test_leader_scope_is_named(tmp_path: Path) -> None:
    done = react_test(tmp_path, "salt/minion/x/start", "id=x")
    assert "reactor_scope leader" not in done.stdout
    conf = tmp_path / "master"
    conf.write_text(conf.read_text() + "reactor_scope: leader\ncluster: {servers: [nats://h]}\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--config", str(conf), "--sock-dir", str(tmp_path / "nobus")]  # noqa: RUF005
        + ["--test", "salt/minion/x/start", "id=x"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        "(reactor_scope leader: only the node holding the lease runs what follows)"
    )


def test_check_and_test_show_a_lock_rendered_for_the_event_and_a_limit(tmp_path: Path) -> None:
    (tmp_path / "deploy.sls").write_text(
        "deploy:\n  cmd.run:\n    - cmd: [deploy, \"{{ data['service'] }}\"]\n"
        "  lock: \"deploy-{{ data['service'] }}\"\n  concurrency: 2\n"
    )
    conf = tmp_path / "reactor.conf"
    conf.write_text(f"reactor:\n  - 'app/deploy':\n    - {tmp_path / 'deploy.sls'}\n")
    base = [str(SALTBUS), "react", "--config", str(conf), "--sock-dir", str(tmp_path / "nobus")]

    def run(*args: str) -> list[str]:
        done = subprocess.run(
            base + list(args),
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=clean_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    checked = run("--check")
    assert any("deploy: cmd.run ok  [lock: deploy-; concurrency: 2]" in line for line in checked), (
        checked
    )
    tried = run("--test", "app/deploy", "service=web")
    assert (
        '    deploy (line 1): WOULD RUN cmd.run {"cmd": ["deploy", "web"], "env": {}, '
        '"shell": false, "timeout": 300.0} [lock: deploy-web (one at a time per key, '
        "queued), concurrency: 2 (at most that many at once)]"
    ) in tried
