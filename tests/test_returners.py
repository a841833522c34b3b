"""Returner plumbing without threads: Salt's filters, finding returners by
name (built-ins and entry points), and the config options."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest

from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.returners import TagFilter, available, load_returner, plugins
from saltbus.returners.pgjsonb import PgJsonbReturner
from tests.returners_support import Recorder, install_plugin

# -- filters -----------------------------------------------------------------


def test_no_lists_return_everything():
    keep = TagFilter()
    assert not keep.active
    assert keep("salt/job/1/ret/m1") and keep("anything")


def test_whitelist_keeps_only_matching_tags():
    keep = TagFilter(whitelist=["salt/job/*/ret/*", "app/?"])
    assert keep("salt/job/20240101/ret/minion1")
    assert keep("app/x")
    assert not keep("app/xy")
    assert not keep("salt/job/20240101/new")
    assert not keep("xsalt/job/1/ret/m")  # anchored at the start, as fnmatch


def test_blacklist_applies_after_the_whitelist():
    keep = TagFilter(whitelist=["salt/*"], blacklist=["salt/auth", "salt/minion/*/start"])
    assert keep("salt/job/1/new")
    assert not keep("salt/auth")
    assert not keep("salt/minion/m1/start")
    assert not keep("other/tag")
    assert TagFilter(blacklist=["*/beat"])("a/b")
    assert not TagFilter(blacklist=["*/beat"])("a/beat")


def test_filter_matches_as_fnmatch_does():
    patterns = ["salt/[ab]*", "x?y", "*.*", "[!z]end", "lit[*]"]
    tags = ["salt/a1", "salt/c", "xay", "xy", "a.b", "aend", "zend", "lit*", "litx", ""]
    keep = TagFilter(whitelist=patterns)
    for tag in tags:
        assert keep(tag) == any(fnmatch.fnmatch(tag, p) for p in patterns), tag


# -- finding returners -------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(where))
    yield where
    for name in ("sbtest_returner", "sbtest_modret"):
        sys.modules.pop(name, None)


def test_entry_point_plugin_is_found_and_given_its_options(plugin_dir: Path, tmp_path: Path):
    assert {"jsonfile", "modret", "pgjsonb"} <= set(available())
    ret = load_returner("jsonfile", {"path": str(tmp_path / "out.jsonl")})
    ret.event_return([{"tag": "a", "data": {"n": 1}, "seq": 1, "time": 0.0}])
    assert '"seq": 1' in (tmp_path / "out.jsonl").read_text()


def test_a_module_with_event_return_is_a_returner(plugin_dir: Path):
    ret = load_returner("modret", {})
    ret.event_return([{"tag": "a", "data": {}, "seq": 1, "time": 0.0}])
    assert sys.modules["sbtest_modret"].RECEIVED[0]["tag"] == "a"  # type: ignore[attr-defined]


def test_entry_point_lookup_can_be_replaced(monkeypatch: pytest.MonkeyPatch):
    ep = importlib.metadata.EntryPoint(
        "fake", "tests.returners_support:Recorder", "saltbus.returners"
    )
    monkeypatch.setattr(plugins, "entry_points", lambda group=plugins.ENTRY_POINT_GROUP: (ep,))
    ret = load_returner("fake", {"opt": 1})
    assert isinstance(ret, Recorder) and ret.options == {"opt": 1}


def test_unknown_returner_names_the_ones_available(plugin_dir: Path):
    with pytest.raises(
        ConfigError, match=r"no returner named 'mongo'.*http.*jsonfile.*mqtt.*mysql.*pgjsonb"
    ):
        load_returner("mongo", {})


def test_broken_plugin_is_a_config_error(plugin_dir: Path):
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_returner("broken", {})


def test_factory_errors_and_objects_without_event_return(monkeypatch: pytest.MonkeyPatch):
    def failing(options: Any) -> Any:
        raise ValueError("no host given")

    with pytest.raises(ConfigError, match="could not be created: no host given"):
        load_returner("f", {}, {"f": failing})
    with pytest.raises(ConfigError, match="no event_return"):
        load_returner("g", {}, {"g": lambda options: object()})  # type: ignore[arg-type,return-value]


def test_factories_win_over_builtins():
    ret = load_returner("pgjsonb", {}, {"pgjsonb": Recorder})
    assert isinstance(ret, Recorder)


def test_builtin_pgjsonb_options_do_no_io():
    ret = load_returner(
        "pgjsonb", {"host": "db.invalid", "pass": "s3cret", "db": "salt", "master_id": "m1"}
    )
    assert isinstance(ret, PgJsonbReturner)
    assert "password=s3cret" in ret.conninfo and "dbname=salt" in ret.conninfo
    assert ret.master_id == "m1" and ret.table == "salt_events"
    with pytest.raises(ConfigError, match="unknown options"):
        load_returner("pgjsonb", {"hots": "x"})
    with pytest.raises(ConfigError, match="table must be"):
        load_returner("pgjsonb", {"table": "a.b.c"})


# -- config ------------------------------------------------------------------


def load(tmp_path: Path, text: str, **overrides: Any) -> Config:
    path = tmp_path / "master"
    path.write_text(text)
    return Config.load(path, env={}, overrides={"sock_dir": tmp_path, **overrides})


def test_defaults_are_salts(tmp_path: Path):
    config = load(tmp_path, "")
    assert config.event_return == ()
    assert config.event_return_queue == 0
    assert config.event_return_queue_max_seconds == 0
    assert config.event_return_whitelist == () and config.event_return_blacklist == ()
    assert config.returner_options == {}


def test_event_return_is_a_name_or_a_list(tmp_path: Path):
    assert load(tmp_path, "event_return: pgjsonb").event_return == ("pgjsonb",)
    assert load(tmp_path, "event_return: [a, b]").event_return == ("a", "b")
    assert load(tmp_path, "event_return: ''").event_return == ()
    env = Config.load(env={"SALTBUS_EVENT_RETURN": "a, b"}, overrides={"sock_dir": tmp_path})
    assert env.event_return == ("a", "b")
    with pytest.raises(ConfigError, match="twice"):
        load(tmp_path, "event_return: [a, a]")
    with pytest.raises(ConfigError, match="string or a list"):
        load(tmp_path, "event_return: {a: 1}")


def test_queue_options_are_checked(tmp_path: Path):
    config = load(
        tmp_path,
        "event_return_queue: 50\nevent_return_queue_max_seconds: 2\n"
        "event_return_whitelist: [salt/job/*]\nevent_return_blacklist: salt/auth\n",
    )
    assert config.event_return_queue == 50
    assert config.event_return_queue_max_seconds == 2.0
    assert config.event_return_whitelist == ("salt/job/*",)
    assert config.event_return_blacklist == ("salt/auth",)
    with pytest.raises(ConfigError, match="event_return_queue"):
        load(tmp_path, "event_return_queue: -1")
    with pytest.raises(ConfigError, match="event_return_queue_max_seconds"):
        load(tmp_path, "event_return_queue_max_seconds: -1")
    with pytest.raises(ConfigError, match="event_return_retry_max_seconds"):
        load(tmp_path, "event_return_retry_max_seconds: 0")


def test_salt_flat_returner_keys_fold_into_returner_options(tmp_path: Path):
    config = load(
        tmp_path,
        "returner.pgjsonb.host: db1\n"
        "returner.pgjsonb.pass: pw\n"
        "returner.other: {a: 1}\n"
        "returner_options: {pgjsonb: {host: db2}}\n",
    )
    assert config.returner_options == {"pgjsonb": {"host": "db2", "pass": "pw"}, "other": {"a": 1}}
    assert config.replace(id="x").returner_options == config.returner_options
    env = Config.load(
        env={"SALTBUS_RETURNER_OPTIONS": '{"pgjsonb": {"dsn": "dbname=x"}}'},
        overrides={"sock_dir": tmp_path},
    )
    assert env.returner_options == {"pgjsonb": {"dsn": "dbname=x"}}
    with pytest.raises(ConfigError, match="returner_options"):
        load(tmp_path, "returner_options: [a]")
