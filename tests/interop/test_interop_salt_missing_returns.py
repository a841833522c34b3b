"""Missed returns (``reactor_missing_returns``) against a real salt-master with
two minions, one of them stopped before the job: `saltbus react` on the
master's bus publishes a job to both through a `local` reaction, and exactly
one ``saltbus/job/<jid>/missing`` comes, naming the stopped minion. Run for
Salt 3007 only, to keep the suite's time down: the ``salt/job/<jid>/new``
event has the same keys in 3006, 3007 and 3008 (Salt's master.py, _prep_pub),
which tests/test_reactor_missing.py covers without a master."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from saltbus import Listener
from saltbus.event import Event
from tests.interop.salt_master_support import MINION_ID, SaltMaster, salt_master_and_minion
from tests.interop.test_interop_salt_reactions import WARM, React, fire, salt_env, warm_up

WAIT = 60.0
TIMEOUT = 4.0  # reactor_missing_returns_timeout
STOPPED = f"{MINION_ID}-2"
JOB = "ping_all:\n  local.test.ping:\n    - tgt: '*'\n"


@pytest.fixture(scope="module")
def master() -> Iterator[SaltMaster]:
    with salt_master_and_minion("3007", more_minions=1) as running:
        running.stop_minion(STOPPED)
        yield running


def test_one_missing_event_names_the_stopped_minion(master: SaltMaster, tmp_path: Path) -> None:
    (tmp_path / "job.sls").write_text(JOB)
    (tmp_path / "warm.sls").write_text(WARM)
    conf = yaml.safe_load(master.config_file.read_text())
    conf["reactor"] = [
        {"app/job": [str(tmp_path / "job.sls")]},
        {"app/warm": [str(tmp_path / "warm.sls")]},
    ]
    conf["reactor_missing_returns"] = True
    conf["reactor_missing_returns_timeout"] = TIMEOUT
    path = tmp_path / "master"
    path.write_text(yaml.safe_dump(conf))
    events: list[Event] = []
    with Listener(master.bus_config(), "") as listener:
        listener.connect(WAIT)
        react = React("--config", str(path), "--salt-version", master.version, env=salt_env(master))
        try:
            react.wait_for("running on the")
            warm_up(master, listener)
            fire(master, "app/job")
            deadline = time.monotonic() + WAIT
            while not any(e.tag.endswith("/missing") for e in events):
                assert time.monotonic() < deadline, [e.tag for e in events]
                event = listener.receive(1.0)
                if event is not None:
                    events.append(event)
            # Past the job's timeout again: nothing more is reported.
            quiet_until = time.monotonic() + TIMEOUT + 2
            while time.monotonic() < quiet_until:
                event = listener.receive(0.5)
                if event is not None:
                    events.append(event)
        finally:
            assert react.stop() == 0, "".join(react.lines)
    (ret,) = [e for e in events if e.tag == "saltbus/reactor/ping_all/ret"]
    jid = ret.data["result"]["jid"]
    (new,) = [e for e in events if e.tag == f"salt/job/{jid}/new"]
    assert sorted(new.data["minions"]) == [MINION_ID, STOPPED]
    assert [e.tag for e in events if e.tag.startswith(f"salt/job/{jid}/ret/")] == [
        f"salt/job/{jid}/ret/{MINION_ID}"
    ]
    (missing,) = [e for e in events if e.tag.endswith("/missing")]
    assert missing.tag == f"saltbus/job/{jid}/missing"
    assert missing.data["missing"] == [STOPPED]
    assert (missing.data["fun"], missing.data["tgt"]) == ("test.ping", "*")
    assert missing.data["returned"] == 1
    assert missing.data["timeout"] == TIMEOUT
    assert f"no return from {STOPPED}" in "".join(react.lines)
