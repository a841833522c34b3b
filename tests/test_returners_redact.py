"""Redaction: the rules, and a secret kept from a sink, from `history --redact`
and, with redact_journal, from the journal and every live subscriber."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from saltbus import Config, Listener, Sender
from saltbus.errors import ConfigError
from saltbus.returners.redact import MARKER, Redactor
from saltbus.wire import pack_body, unpack_body
from tests.returners_support import WAIT, write_config
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PASSWORD = "hunter2-very-secret"


def secret_event() -> dict[str, Any]:
    return {
        "fun": "cmd.run",
        "env": {"DB": {"password": PASSWORD}, "HOME": "/root"},
        "aws_secret_access_key": AWS_SECRET,
        "cmd": f"aws configure set aws_access_key_id {AWS_ID}",
        "items": [{"passwd": PASSWORD}, "plain"],
    }


def test_defaults_catch_salts_usual_suspects():
    data = secret_event()
    got = Redactor({}).redact(data)
    assert got["env"] == {"DB": {"password": MARKER}, "HOME": "/root"}
    assert got["aws_secret_access_key"] == MARKER
    assert got["cmd"] == f"aws configure set aws_access_key_id {MARKER}"
    assert got["items"] == [{"passwd": MARKER}, "plain"]
    assert got["_redacted"] == ["aws_secret_access_key", "cmd", "env.DB.password", "items.0.passwd"]
    assert data == secret_event(), "the caller's data was changed"
    text = json.dumps(got)
    assert PASSWORD not in text and AWS_SECRET not in text and AWS_ID not in text


def test_a_pem_private_key_in_text():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----"
    got = Redactor({}).redact({"out": f"key:\n{pem}\ndone"})
    assert got["out"] == f"key:\n{MARKER}\ndone"


def test_own_keys_paths_values_and_marker():
    rules = {
        "keys": ["api_*"],
        "paths": ["creds.*.pin", "list.1"],
        "values": [r"\d{4}-\d{4}"],
        "defaults": False,
        "marker": "<gone>",
    }
    data = {
        "password": "kept: defaults are off",
        "API_KEY": "k",
        "creds": {"a": {"pin": 1, "other": 2}, "pin": 3},
        "list": ["x", "y"],
        "note": "card 1234-5678 ok",
    }
    got = Redactor(rules).redact(data)
    assert got == {
        "password": "kept: defaults are off",
        "API_KEY": "<gone>",
        "creds": {"a": {"pin": "<gone>", "other": 2}, "pin": 3},
        "list": ["x", "<gone>"],
        "note": "card <gone> ok",
        "_redacted": ["API_KEY", "creds.a.pin", "list.1", "note"],
    }


def test_nothing_to_redact_is_the_same_object_and_twice_is_once():
    clean = {"a": 1, "b": [1, {"c": "d"}]}
    redactor = Redactor({})
    assert redactor.redact(clean) is clean
    once = redactor.redact(secret_event())
    assert redactor.redact(once) == once
    body = pack_body("t/x", clean)
    assert redactor.redact_body(body) is body
    tag, data = unpack_body(redactor.redact_body(pack_body("t/x", secret_event())))
    assert tag == "t/x" and data["env"]["DB"]["password"] == MARKER


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"keys": "ok", "colour": 1}, "unknown keys"),
        ({"values": ["("]}, "is not a regular expression"),
        ({"paths": [1]}, "redact.paths must be a list of strings"),
        ({"marker": ""}, "marker must be a non-empty string"),
        (3, "redact must be true, false or a mapping"),
    ],
)
def test_bad_rules(value: Any, message: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=message):
        Config.load(write_config(tmp_path / "c", {"redact": value}), env={})


def test_redact_journal_needs_rules(tmp_path: Path):
    with pytest.raises(ConfigError, match="redact_journal needs redact rules"):
        Config.load(write_config(tmp_path / "c", {"redact_journal": True}), env={})
    loaded = Config.load(write_config(tmp_path / "c", {"redact": True}), env={})
    assert loaded.redact == {
        "keys": (),
        "paths": (),
        "values": (),
        "defaults": True,
        "marker": MARKER,
    }


def history(config: Config, *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [os.fspath(SALTBUS), "history", "--json", *bus_flags(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def serve_with_sink(bus_config: Config, tmp_path: Path, **settings: Any) -> tuple[Path, Path]:
    out = tmp_path / "sink" / "events"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "event_return": "rawfile_json",
            "rawfile_json.filename": str(out),
            "redact": {"keys": ["db_pin"]},
            **settings,
        },
    )
    return config_file, out


def fire_secret(bus_config: Config, out: Path) -> dict[str, Any]:
    with Sender(bus_config) as sender:
        sender.fire("app/deploy", {**secret_event(), "db_pin": 4321}, timeout=5, ack=True)
    wait_until(lambda: out.exists() and out.read_text().endswith("\n"), "the sink", WAIT)
    (line,) = out.read_text().splitlines()
    assert PASSWORD not in line and AWS_SECRET not in line and AWS_ID not in line
    assert "4321" not in line
    sunk: dict[str, Any] = json.loads(line)["data"]
    assert "env.DB.password" in sunk["_redacted"] and "db_pin" in sunk["_redacted"]
    return sunk


def test_a_sink_and_history_redact_but_the_journal_keeps(bus_config: Config, tmp_path: Path):
    config_file, out = serve_with_sink(bus_config, tmp_path)
    with ServeProcess(bus_config, "--config", str(config_file)):
        fire_secret(bus_config, out)
    (kept,) = history(bus_config)
    assert kept["data"]["env"]["DB"]["password"] == PASSWORD, "redacted without redact_journal"
    (shown,) = history(bus_config, "--config", str(config_file), "--redact")
    assert shown["data"]["env"]["DB"]["password"] == MARKER
    assert shown["data"]["db_pin"] == MARKER and shown["data"]["aws_secret_access_key"] == MARKER


def test_redact_journal_keeps_the_value_from_every_local_reader(bus_config: Config, tmp_path: Path):
    config_file, out = serve_with_sink(bus_config, tmp_path, redact_journal=True)
    with (
        ServeProcess(bus_config, "--config", str(config_file)),
        Listener(bus_config, "app/") as listener,
    ):
        fire_secret(bus_config, out)
        live = listener.receive(timeout=WAIT)
    assert live is not None and live.data["env"]["DB"]["password"] == MARKER
    assert AWS_ID not in json.dumps(live.data)
    (journaled,) = history(bus_config)
    assert journaled["data"]["env"]["DB"]["password"] == MARKER
    assert "aws_secret_access_key" in journaled["data"]["_redacted"]


@pytest.mark.parametrize("redact_journal", [True, False])
def test_an_http_client_never_sees_the_value(
    bus_config: Config, tmp_path: Path, redact_journal: bool
):
    """With redact_journal the events reach the bridge redacted; without it,
    the bridge applies its config's rules to what it sends."""
    from saltbus.http import Settings, TokenStore, create_app  # noqa: PLC0415
    from tests.http_support import make_tokens, serve, sse  # noqa: PLC0415

    config_file, out = serve_with_sink(bus_config, tmp_path, redact_journal=redact_journal)
    secrets = make_tokens(tmp_path / "tokens.json", admin=(["*"], ["*"]))
    app = create_app(
        Config.load(config_file, env={}),
        tokens=TokenStore.open(tmp_path / "tokens.json"),
        settings=Settings(heartbeat=0.3),
    )
    with ServeProcess(bus_config, "--config", str(config_file)):
        fire_secret(bus_config, out)
        with serve(app) as base_url, httpx.Client(timeout=10) as client:
            url = f"{base_url}/events?backlog=5&token={secrets['admin']}"
            with sse(client, url) as stream:
                (*_, message) = stream.until("app/deploy")
    text = json.dumps(message.json())
    assert PASSWORD not in text and AWS_SECRET not in text and AWS_ID not in text
    assert "env.DB.password" in message.json()["data"]["_redacted"]


@pytest.mark.parametrize("redact_journal", [True, False])
def test_a_federated_peer_never_sees_the_value(redact_journal: bool):
    """With redact_journal the export reads redacted events; without it, the
    export applies the rules to what it publishes."""
    import yaml  # noqa: PLC0415

    from tests.cluster_support import Node, nats_servers, running, short_dir, wait_imported  # noqa: PLC0415

    with short_dir() as root, nats_servers(root, 1) as (nats,):
        a = Node(root, "a", [nats.url])
        settings = yaml.safe_load(a.config_file.read_text())
        a.config_file.write_text(
            yaml.safe_dump({**settings, "redact": True, "redact_journal": redact_journal})
        )
        b = Node(root, "b", [nats.url])
        with running([a, b]):
            a.fire("app/deploy", secret_event())
            wait_imported(b, 1)
            ((origin, _, tag, data),) = b.imported()
    assert (origin, tag) == ("a", "app/deploy")
    text = json.dumps(data)
    assert PASSWORD not in text and AWS_SECRET not in text and AWS_ID not in text
    assert data["env"]["DB"]["password"] == MARKER
