"""Tokens of the HTTP bridge: hashed on disk, file mode 0600, scoped by tag patterns."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from saltbus.errors import ConfigError
from saltbus.http.tokens import SECRET_PREFIX, Grant, TokenStore, hash_secret, insecure_mode


def test_create_stores_only_a_hash_in_a_private_file(tmp_path: Path):
    path = tmp_path / "tokens.json"
    secret = TokenStore(path).create("dash", ["app/*"], ["app/cmd/*"])
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    text = path.read_text()
    assert secret not in text
    assert hash_secret(secret) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not insecure_mode(path)
    record = json.loads(text)["tokens"][0]
    assert record["read"] == ["app/*"] and record["fire"] == ["app/cmd/*"]


def test_authenticate(tmp_path: Path):
    store = TokenStore(tmp_path / "tokens.json")
    secret = store.create("dash", ["app/*"])
    grant = store.authenticate(secret)
    assert grant is not None and grant.name == "dash"
    assert store.authenticate(secret + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate(None) is None


def test_secrets_differ(tmp_path: Path):
    store = TokenStore(tmp_path / "tokens.json")
    assert store.create("a") != store.create("b")


def test_revoke_is_seen_by_another_store_on_the_same_file(tmp_path: Path):
    path = tmp_path / "tokens.json"
    secret = TokenStore(path).create("dash")
    running = TokenStore.open(path)  # as a running bridge holds it
    assert running.authenticate(secret) is not None
    TokenStore.open(path).revoke("dash")
    assert running.authenticate(secret) is None
    assert running.records() == []


def test_names_are_unique_and_checked(tmp_path: Path):
    store = TokenStore(tmp_path / "tokens.json")
    store.create("dash")
    with pytest.raises(ConfigError, match="exists"):
        store.create("dash")
    with pytest.raises(ConfigError, match="token name"):
        store.create("no spaces")
    with pytest.raises(ConfigError, match="no token named"):
        store.revoke("other")


def test_open_refuses_missing_and_foreign_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="token create"):
        TokenStore.open(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not a saltbus token file"):
        TokenStore.open(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        TokenStore.open(broken)


def test_insecure_mode(tmp_path: Path):
    path = tmp_path / "tokens.json"
    TokenStore(path).create("a")
    os.chmod(path, 0o644)
    assert insecure_mode(path)


def test_grant_patterns_are_fnmatch_and_case_sensitive():
    grant = Grant("t", ("app/*", "salt/job/*/ret/*"), ("app/cmd/[ab]",))
    assert grant.may_read("app/x")
    assert grant.may_read("app/x/y")
    assert grant.may_read("salt/job/123/ret/web1")
    assert not grant.may_read("salt/auth")
    assert not grant.may_read("App/x")
    assert not grant.may_read("xapp/x")
    assert grant.may_fire("app/cmd/a")
    assert not grant.may_fire("app/cmd/c")
    assert not grant.may_fire("app/x")


def test_empty_patterns_allow_nothing():
    grant = Grant("t")
    assert not grant.may_read("") and not grant.may_read("a")
    assert not grant.may_fire("a")
    everything = Grant.everything()
    assert everything.may_read("anything/at/all") and everything.may_fire("x")
