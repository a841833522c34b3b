"""Salt's reactions through salt-api (rest_tornado's /run, the `auto` eauth) for a
master that saltbus reaches only over HTTP: local and runner reactions with their
ret events' jid and success, a wheel reaction failing with salt-api's reason
(rest_tornado has no wheel client), --check, and refused credentials (Salt 3007)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from saltbus import Listener
from saltbus.event import Event
from tests.interop.buses import run_saltbus
from tests.interop.salt_master_support import (
    API_PASSWORD,
    API_USER,
    SaltMaster,
    salt_master_and_minion,
)
from tests.interop.test_interop_salt_reactions import (
    REACTIONS,
    WAIT,
    WARM,
    React,
    collect,
    fire,
    salt_rets,
    warm_up,
)
from tests.serve_support import clean_env


@pytest.fixture(scope="module")
def master() -> Iterator[SaltMaster]:
    with salt_master_and_minion("3007", salt_api=True) as running:
        yield running


def api_conf(master: SaltMaster, tmp_path: Path, **api: Any) -> Path:
    """A saltbus config (not the master's): the bus, the reactor, salt_api."""
    (tmp_path / "salt.sls").write_text(REACTIONS)
    (tmp_path / "warm.sls").write_text(WARM)
    settings = {
        "sock_dir": str(master.sock_dir),
        "salt_version": master.version,
        "journal": "none",
        "reactor": [
            {"app/salt": [str(tmp_path / "salt.sls")]},
            {"app/warm": [str(tmp_path / "warm.sls")]},
        ],
        # No Salt on this host as far as the reactor knows.
        "salt_python": str(tmp_path / "no-python"),
        "salt_api": {
            "url": master.api_url,
            "username": API_USER,
            "password": API_PASSWORD,
            "eauth": "auto",
            **api,
        },
    }
    path = tmp_path / "saltbus.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def run_reactions(master: SaltMaster, conf: Path) -> dict[str, dict[str, Any]]:
    with Listener(master.bus_config(), "") as listener:
        listener.connect(WAIT)
        react = React("--config", str(conf), env=clean_env())
        try:
            react.wait_for("running on the")
            warm_up(master, listener)
            fire(master, "app/salt", minion=master.minion_id, word="api")

            def done(events: list[Event]) -> bool:
                rets = {e.data["reaction"]: e.data for e in salt_rets(events)}
                if len(rets) < 5:
                    return False
                jids = {rets[name].get("jid") for name in ("ping", "echo")} - {None}
                returned = {e.data.get("jid") for e in events if "/ret/" in e.tag}
                return jids <= returned

            events = collect(listener, done)
        finally:
            assert react.stop() == 0, "".join(react.lines)
    got = {e.data["reaction"]: e.data for e in salt_rets(events)}
    job_rets = {
        e.data["jid"]: e.data for e in events if e.tag.startswith("salt/job/") and "/ret/" in e.tag
    }
    for name in ("ping", "echo"):
        if got[name]["success"]:
            assert job_rets[got[name]["jid"]]["id"] == master.minion_id
    return got


def test_local_runner_and_wheel_through_salt_api(master: SaltMaster, tmp_path: Path) -> None:
    got = run_reactions(master, api_conf(master, tmp_path))
    for name in ("ping", "echo", "args"):
        assert got[name]["success"] is True, got[name]
    assert got["ping"]["result"]["minions"] == [master.minion_id]
    assert got["ping"]["jid"] and got["echo"]["jid"] and got["args"]["jid"]
    assert got["args"]["result"]["return"]["kwargs"]["who"] == master.minion_id
    assert got["keys"]["success"] is False
    assert got["keys"]["error"] == (
        f"salt-api at {master.api_url} answered HTTP 400: "
        "'400 Invalid Client: Client not found in salt clients'"
    )


def test_check_and_refused_credentials(master: SaltMaster, tmp_path: Path) -> None:
    conf = api_conf(master, tmp_path)
    done = run_saltbus("react", "--check", "--config", str(conf), timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        f"Salt's reactions: through salt-api at {master.api_url} (eauth auto), credentials accepted"
    )
    bad = api_conf(master, tmp_path, eauth="pam")
    done = run_saltbus("react", "--check", "--config", str(bad), timeout=WAIT)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"saltbus: error: Salt's reactions cannot reach Salt: salt-api at {master.api_url} "
        f"refused the credentials of {API_USER!r} (eauth pam): salt-api said "
        "'Failed to authenticate'"
    )
    got = run_reactions(master, bad)
    for name in ("ping", "echo", "args"):
        assert got[name]["success"] is False
        assert got[name]["error"].endswith("(eauth pam): salt-api said 'Failed to authenticate'")
    assert got["keys"]["success"] is False  # no wheel client: refused before eauth
