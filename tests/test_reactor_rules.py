"""saltbus.reactor.rules: Salt's ``reactor:`` list loaded from a config file, with
path globs, relative paths, errors naming file and line, and a configuration
written in the form of Salt's reactor documentation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.rules import load_rules

# Salt's documented master config, in form (paths under the test's directory).
SALT_DOC_MASTER = """\
reactor:                            # Master config section "reactor"
  - 'salt/minion/*/start':          # Match tag "salt/minion/*/start"
    - reactor/start.sls             # Things to do when a minion starts
    - reactor/monitor.sls           # Other things to do
  - 'salt/cloud/*/destroyed':       # Globs can be used to match tags
    - reactor/destroy/*.sls         # Globs can be used to match file names
  - 'myco/custom/event/tag':        # React to custom event tags
    - reactor/mycustom.sls
"""
SALT_DOC_FILES = {
    "start.sls": """\
{% if data['id'] == 'mysql1' %}
highstate_run:
  local.state.highstate:
    - tgt: mysql1
{% endif %}
""",
    "monitor.sls": """\
spin_up_more_web_machines:
  runner.cloud.profile:
    - prof: centos_6
    - instances:
      - web11       # These VM names would be generated via Jinja in a
      - web12       # real-world example.
""",
    "destroy/clean.sls": """\
clean_tmp:
  local.cmd.run:
    - tgt: '*'
    - arg:
      - rm -rf /tmp/*
""",
    "mycustom.sls": """\
{# Ink server is sending new key -- accept this key #}
{% if 'act' in data and data['act'] == 'pend' and data['id'].startswith('ink') %}
minion_add:
  wheel.key.accept:
    - match: {{ data['id'] }}
{% endif %}
""",
}


def write(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / "reactor" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load(base: Path, master: str) -> Config:
    (base / "master").write_text(master)
    return Config.load(base / "master", env={}, overrides={"sock_dir": base / "bus"})


def test_salt_documentation_config_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, SALT_DOC_FILES)
    config = load(tmp_path, SALT_DOC_MASTER)
    with caplog.at_level(logging.WARNING, "saltbus.reactor"):
        rules = load_rules(config, tmp_path)
    assert [r.pattern for r in rules.rules] == [
        "salt/minion/*/start",
        "salt/cloud/*/destroyed",
        "myco/custom/event/tag",
    ]
    assert rules.files == 4
    matched = rules.match("salt/minion/mysql1/start")
    assert [t.path.name for t in matched] == ["start.sls", "monitor.sls"]
    assert [t.path.name for t in rules.match("salt/cloud/web1/destroyed")] == ["clean.sls"]
    assert rules.match("salt/minion/web1/stop") == []
    # The trial render found Salt's reactions (those inside {% if %} on the
    # event's data show up only with an event).
    salts = sorted((r.name, r.client) for r in rules.found if r.client)
    assert salts == [("clean_tmp", "local"), ("spin_up_more_web_machines", "runner")]


def test_fnmatch_like_salt_and_a_file_once_per_event(tmp_path: Path) -> None:
    write(tmp_path, {"a.sls": "a:\n  event.send:\n    - tag: x\n"})
    master = "reactor:\n  - 'app/*': [reactor/a.sls]\n  - 'app/[ab]?': reactor/a.sls\n"
    rules = load_rules(load(tmp_path, master), tmp_path)
    assert len(rules.match("app/b1")) == 1  # listed under two matching globs: runs once
    assert len(rules.match("app/deep/er")) == 1  # fnmatch's * crosses '/'
    assert rules.match("other/app/x") == []


def test_relative_paths_are_from_base_dir_and_globs_sorted(tmp_path: Path) -> None:
    write(tmp_path, {"d/b.sls": "", "d/a.sls": "", "d/c.txt": ""})
    rules = load_rules(load(tmp_path, "reactor:\n  - 'x': ['reactor/d/*.sls']\n"), tmp_path)
    assert [t.path for t in rules.rules[0].templates] == [
        tmp_path / "reactor/d/a.sls",
        tmp_path / "reactor/d/b.sls",
    ]


def test_glob_matching_nothing_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "saltbus.reactor"):
        rules = load_rules(load(tmp_path, "reactor:\n  - 'x': ['none/*.sls']\n"), tmp_path)
    assert rules.rules[0].templates == ()
    assert "no reaction file matches" in caplog.text


def test_missing_file_and_salt_fileserver_paths(tmp_path: Path) -> None:
    with pytest.raises(ReactionFileError, match=r"nope\.sls: reactor 'x': no such reaction file"):
        load_rules(load(tmp_path, "reactor:\n  - 'x': [nope.sls]\n"), tmp_path)
    with pytest.raises(ConfigError, match="Salt master's fileserver"):
        load_rules(load(tmp_path, "reactor:\n  - 'x': ['salt://reactor/a.sls']\n"), tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a:\n  event.send:\n    - tag: x\n  - data: 1\n", 4, "YAML"),
        ("a:\n  event.send:\n    - tag: {{ data[ }}\n", 3, "Jinja2"),
        ("a:\n  event.send:\n    - tag: x\nb:\n  evnt.send: []\n", 4, "unknown action"),
        ("a:\n  event.send:\n    - tag: x\n  when: data[\n", 1, "when:"),
    ],
)
def test_errors_in_reaction_files_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    write(tmp_path, {"bad.sls": text})
    with pytest.raises(ReactionFileError, match=message) as caught:
        load_rules(load(tmp_path, "reactor:\n  - 'x': [reactor/bad.sls]\n"), tmp_path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{tmp_path / 'reactor/bad.sls'}:{line}: ")


def test_reactor_config_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reactor item 1"):
        load(tmp_path, "reactor:\n  - just-a-string\n")
    with pytest.raises(ConfigError, match="reactor_worker_hwm must be positive"):
        load(tmp_path, "reactor_worker_hwm: 0\n")
    with pytest.raises(ConfigError, match="reactor_name"):
        load(tmp_path, "reactor_name: ../x\n")
    config = load(tmp_path, "reactor_catch_up: no\nreactor_max_depth: '3'\n")
    assert (config.reactor_catch_up, config.reactor_max_depth) == (False, 3)
    env = Config.load(env={"SALTBUS_REACTOR": "[{'a/*': [x.sls]}]"}, overrides={"sock_dir": "/t"})
    assert env.reactor == (("a/*", ("x.sls",)),)
