"""saltbus.cli.react_oneshot: `saltbus react --check` lists the configuration
and says when Salt cannot be reached; `--refire` (and `saltbus history
--refire`) fires a journal's event again, marked (`--test`: test_reactor_trial)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from saltbus import Config, Listener, Sender
from tests.serve_support import SALTBUS, bus_flags, clean_env
from tests.test_reactor_cli import SALT_DOC_MASTER, WAIT, reactor_conf, salt_doc_files


def test_check_lists_the_configuration(tmp_path: Path, bus_config: Config) -> None:
    conf = reactor_conf(tmp_path, salt_doc_files(tmp_path / "out"), "")
    conf.write_text(SALT_DOC_MASTER + f"salt_python: {tmp_path / 'no-python'}\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--check", "--config", str(conf), *bus_flags(bus_config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert "'salt/minion/*/start':" in done.stdout
    assert "line 6: record_start: cmd.run ok" in done.stdout
    assert "clean_tmp: local.cmd.run ok (Salt's local client, through the master)" in done.stdout
    # Salt's reactions cannot reach Salt here: one line, and a failure.
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"saltbus: error: Salt's reactions cannot reach Salt: salt_python {tmp_path / 'no-python'} "
        "is not an executable file; set it to the python Salt runs on "
        "(e.g. /opt/saltstack/salt/bin/python3)"
    ]
    retried = tmp_path / "reactor/start.sls"
    retried.write_text("a:\n  cmd.run:\n    - cmd: [x]\n  retry: {attempts: 4, factor: 3}\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--check", "--config", str(conf), *bus_flags(bus_config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (
        "    line 1: a: cmd.run ok  "
        "[retry: 4 attempts, waiting 1 s x 3 (at most 60 s) between them]"
    ) in done.stdout.splitlines()
    bad = tmp_path / "reactor/start.sls"
    bad.write_text("a:\n  cmd.run:\n    - cmd: [x]\n   - oops\n")
    done = subprocess.run(
        [str(SALTBUS), "react", "--check", "--config", str(conf), *bus_flags(bus_config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2 and f"{bad}:4: YAML" in done.stderr


@pytest.mark.usefixtures("publisher")
@pytest.mark.parametrize("command", ["react", "history"])
def test_refire_fires_a_journaled_event_again_marked(bus_config: Config, command: str) -> None:
    """`saltbus history --refire` is `saltbus react --refire` under another name."""
    origin = {"node": "b", "seq": 9, "epoch": 1}
    with Sender(bus_config) as sender:
        first = sender.fire("app/missed", {"v": 1, "_saltbus_origin": origin}, ack=True)
    assert first.seq is not None
    with Listener(bus_config, "app/missed") as listener:
        listener.connect(5)
        done = subprocess.run(
            [str(SALTBUS), command, "--refire", str(first.seq), *bus_flags(bus_config)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=clean_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        again = listener.receive(WAIT)
    assert again is not None and again.seq is not None and again.seq > first.seq
    assert done.stdout == f"saltbus: fired app/missed (seq {first.seq}) again as seq {again.seq}\n"
    refired = again.data["_saltbus_refired"]
    assert refired == {"seq": first.seq, "stamp": first.data["_stamp"], "origin": origin}
    assert again.data["v"] == 1 and "_saltbus_origin" not in again.data  # now this node's
