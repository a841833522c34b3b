"""`saltbus token create|list|revoke`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from saltbus.cli.main import main
from saltbus.http.tokens import TokenStore


def test_create_prints_the_secret_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "conf" / "tokens.json"
    code = main(
        ["token", "create", "dash", "--read", "app/*", "--fire", "app/cmd/*", "--tokens", str(path)]
    )
    out, err = capsys.readouterr()
    assert code == 0
    secret = out.strip()
    assert secret.startswith("sbt_") and "\n" not in secret
    assert "shown only now" in err and secret not in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in path.read_text()
    grant = TokenStore.open(path).authenticate(secret)
    assert grant is not None
    assert grant.read == ("app/*",) and grant.fire == ("app/cmd/*",)


def test_defaults_read_everything_fire_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "tokens.json"
    assert main(["token", "create", "viewer", "--tokens", str(path)]) == 0
    grant = TokenStore.open(path).authenticate(capsys.readouterr().out.strip())
    assert grant is not None and grant.read == ("*",) and grant.fire == ()


def test_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = str(tmp_path / "tokens.json")
    main(["token", "create", "a", "--read", "x/*", "--tokens", path])
    main(["token", "create", "b", "--fire", "y/*", "--tokens", path])
    capsys.readouterr()

    assert main(["token", "list", "--tokens", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "READ", "FIRE", "CREATED"]
    assert lines[1].split()[:3] == ["a", "x/*", "-"]
    assert lines[2].split()[:3] == ["b", "*", "y/*"]

    assert main(["token", "list", "--json", "--tokens", path]) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [i["name"] for i in items] == ["a", "b"]
    assert all("sha256" not in i for i in items)

    assert main(["token", "revoke", "a", "--tokens", path]) == 0
    capsys.readouterr()
    main(["token", "list", "--tokens", path])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["NAME", "b"]


def test_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = str(tmp_path / "tokens.json")
    assert main(["token", "revoke", "a", "--tokens", path]) == 2
    assert "no token file" in capsys.readouterr().err
    main(["token", "create", "a", "--tokens", path])
    assert main(["token", "create", "a", "--tokens", path]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["token", "revoke", "zzz", "--tokens", path]) == 2
    assert "no token named" in capsys.readouterr().err
