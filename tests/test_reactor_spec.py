"""saltbus.reactor.spec and saltbus.reactor.saltcalls: reactions in Salt's shapes,
checked; Salt's local/runner/wheel reactions read in Salt's argument forms, and
caller reactions too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from saltbus.errors import ConfigError
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.spec import Reaction, parse_duration, parse_reactions

PATH = Path("/srv/reactor/x.sls")


def parse(text: str, *, strict: bool = True) -> tuple[Reaction, ...]:
    doc = yaml.safe_load(text)
    lines = {}
    node = yaml.compose(text)
    if isinstance(node, yaml.MappingNode):
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return parse_reactions(doc, PATH, lines, strict=strict)


def one(text: str) -> Reaction:
    (reaction,) = parse(text)
    return reaction


def test_salt_list_of_single_key_mappings() -> None:
    r = one(
        """
write_marker:
  cmd.run:
    - cmd: ["sh", "-c", "echo 1 > /tmp/x"]
    - timeout: 10
"""
    )
    assert r.name == "write_marker" and r.function == "cmd.run" and r.line == 2
    assert r.options == {
        "cmd": ["sh", "-c", "echo 1 > /tmp/x"],
        "timeout": 10.0,
        "shell": False,
        "env": {},
    }
    assert r.client is None


def test_salt_args_form_keywords_and_positionals() -> None:
    r = one(
        """
tell:
  event.send:
    - args:
      - app/seen
      - data: {v: 1}
"""
    )
    assert r.options == {"tag": "app/seen", "data": {"v": 1}}


def test_arg_and_kwarg_and_mapping_forms() -> None:
    a = one("x:\n  event.send:\n    - arg: [app/a]\n    - kwarg: {data: {n: 1}}\n")
    b = one("x:\n  event.send: {tag: app/a, data: {n: 1}}\n")
    assert a.options == b.options == {"tag": "app/a", "data": {"n": 1}}


def test_extras_beside_the_action_or_among_its_arguments() -> None:
    beside = one(
        """
page:
  http.post:
    - url: http://127.0.0.1:1/x
  when: data['level'] == 'crit'
  once_within: 5m
  group_by: [host]
"""
    )
    among = one(
        """
page:
  http.post:
    - url: http://127.0.0.1:1/x
    - when: data['level'] == 'crit'
    - once_within: 300
    - group_by: host
"""
    )
    for r in (beside, among):
        assert (r.when, r.once_within, r.group_by) == ("data['level'] == 'crit'", 300.0, ("host",))
        assert "when" not in r.options


def test_lock_and_concurrency_beside_or_among_and_on_salts_reactions() -> None:
    beside = one("r:\n  event.send:\n    - tag: a\n  lock: deploy-web\n  concurrency: 2\n")
    among = one("r:\n  event.send:\n    - tag: a\n    - lock: deploy-web\n    - concurrency: 2\n")
    salts = one(
        "r:\n  local.state.apply:\n    - tgt: web1\n    - lock: deploy-web\n    - concurrency: 2\n"
    )
    for r in (beside, among, salts):
        assert (r.lock, r.concurrency) == ("deploy-web", 2)
        assert "lock" not in r.options and "concurrency" not in r.options
    assert one("r:\n  event.send:\n    - tag: a\n  lock: 42\n").lock == "42"
    plain = one("r:\n  event.send:\n    - tag: a\n")
    assert (plain.lock, plain.concurrency) == (None, None)


def test_http_post_and_python_defaults() -> None:
    h = one("h:\n  http.post:\n    - url: https://example.com/hook\n")
    assert h.options == {
        "url": "https://example.com/hook",
        "headers": {},
        "timeout": 10.0,
        "backoff": 0.5,
        "retries": 3,
    }
    p = one("p:\n  python:\n    - function: pkg.mod:handle\n")
    assert p.options == {"function": "pkg.mod:handle", "kwargs": {}}


@pytest.mark.parametrize(
    ("text", "client", "fun"),
    [
        ("r:\n  local.state.apply:\n    - tgt: web*\n", "local", "state.apply"),
        ("r:\n  runner.state.orchestrate:\n    - args:\n      - mods: orch.x\n", "runner", None),
        ("r:\n  wheel.key.accept:\n    - match: web1\n", "wheel", "key.accept"),
        ("r: runner.cache.clear_grains\n", "runner", "cache.clear_grains"),
        # Salt's cmd alias of local: cmd.run WITH a target, or any other cmd.<fn>.
        ("r:\n  cmd.run:\n    - tgt: '*'\n    - arg: ['rm -rf /tmp/*']\n", "local", "run"),
        ("r:\n  cmd.state.highstate:\n    - tgt: web1\n", "local", "state.highstate"),
    ],
)
def test_salts_reactions_are_run_by_salts_clients(text: str, client: str, fun: str | None) -> None:
    r = one(text)
    assert r.client == client and r.options["client"] == client
    assert r.options["fun"] == (fun or "state.orchestrate")


def test_salts_argument_forms() -> None:
    local = one(
        "r:\n  local.state.apply:\n    - tgt: 'G@os:Debian'\n    - tgt_type: compound\n"
        "    - args:\n      - mods: web\n      - test: true\n    - ret: syslog\n"
        "    - timeout: 30\n    - batch: 10%\n  when: data['ok']\n"
    )
    assert dict(local.options) == {
        "client": "local",
        "fun": "state.apply",
        "tgt": "G@os:Debian",
        "tgt_type": "compound",
        "ret": "syslog",
        "timeout": 30,
        "batch": "10%",
        "arg": [],
        "kwarg": {"mods": "web", "test": True},
    }
    assert local.when == "data['ok']"
    legacy = one(
        "r:\n  cmd.cmd.run:\n    - tgt: [a, b]\n    - expr_form: list\n"
        "    - arg: ['echo hi']\n    - kwarg: {cwd: /tmp}\n    - once_within: 5s\n"
    )
    assert legacy.options["tgt"] == ["a", "b"] and legacy.options["tgt_type"] == "list"
    assert legacy.options["arg"] == ["echo hi"] and legacy.options["kwarg"] == {"cwd": "/tmp"}
    assert legacy.once_within == 5.0
    runner = one("r:\n  runner.test.arg:\n    - arg: [1]\n    - kwarg: {a: 2}\n")
    assert (runner.options["arg"], runner.options["kwarg"]) == ([1], {"a": 2})
    wheel = one("r:\n  wheel.key.delete:\n    - match: '{{ data.id }}'\n")
    assert wheel.options["kwarg"] == {"match": "{{ data.id }}"} and wheel.options["arg"] == []


def test_caller_reactions_in_both_of_salts_forms() -> None:
    r = one("r:\n  caller.file.touch:\n    - args:\n      - name: /tmp/x\n")
    assert r.client == "caller"
    assert dict(r.options) == {
        "client": "caller",
        "fun": "file.touch",
        "arg": [],
        "kwarg": {"name": "/tmp/x"},
    }
    # Salt's older caller form: a plain list of positional arguments.
    legacy = one("r:\n  caller.cmd.run:\n    - args: ['echo hi']\n")
    assert (legacy.options["arg"], legacy.options["kwarg"]) == (["echo hi"], {})


def test_cmd_run_without_target_is_saltbus_command() -> None:
    r = one("r:\n  cmd.run:\n    - cmd: [true]\n")
    assert r.client is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r:\n  local.test.ping:\n    - arg: [1]\n", "needs tgt"),
        ("r:\n  local.test.ping:\n    - tgt: '*'\n    - {a: 1, b: 2}\n", "single"),
        ("r:\n  local.test.ping:\n    - tgt: '*'\n    - tgt_type: planet\n", "tgt_type"),
        ("r:\n  local.test.ping:\n    - tgt: '*'\n    - mods: x\n", "unknown argument mods"),
        ("r:\n  local.test.ping:\n    - tgt: '*'\n    - timeout: -1\n", "timeout must be"),
        ("r:\n  local:\n    - tgt: '*'\n", "names no function"),
        ("r:\n  runner.a.b:\n    - args: [{x: 1}]\n    - arg: [2]\n", "keep one form"),
        ("r:\n  wheel.key.accept:\n    - kwarg: [1]\n", "kwarg must be a mapping"),
    ],
)
def test_salt_reactions_with_bad_arguments_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ReactionFileError, match=message) as info:
        parse(text)
    assert str(info.value).startswith(f"{PATH}:1: reaction 'r'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r:\n  foo.bar:\n    - x: 1\n", "unknown action 'foo.bar'"),
        ("r:\n  cmd.run:\n    - command: [ls]\n", "unknown argument command"),
        ("r:\n  cmd.run:\n    - timeout: 3\n", "cmd.run needs cmd"),
        ("r:\n  cmd.run:\n    - cmd: []\n", "cmd must be"),
        ("r:\n  cmd.run:\n    - cmd: [ls]\n    - timeout: soon\n", "timeout"),
        ("r:\n  event.send:\n    - tag: a\n    - data: [1]\n", "data must be a mapping"),
        ("r:\n  http.post:\n    - url: file:///etc/passwd\n", "http:// or https://"),
        ("r:\n  python:\n    - function: not-a-path\n", "package.module:function"),
        ("r:\n  event.send:\n    - tag: a\n  group_by: [x]\n", "group_by needs once_within"),
        ("r:\n  event.send:\n    - tag: a\n  once_within: -1\n", "not a positive duration"),
        ("r:\n  event.send:\n    - tag: a\n  cmd.run:\n    - cmd: [x]\n", "exactly one action"),
        ("r:\n  event.send:\n    - tag: a\n    - tag: b\n", "given twice"),
        ("r:\n  event.send:\n    - {tag: a, data: {}}\n", "single `- name: value`"),
        ("r: [1, 2]\n", "must map one action"),
        ("r:\n  event.send:\n    - tag: a\n  lock: ''\n", "lock must be a non-empty"),
        ("r:\n  event.send:\n    - tag: a\n  lock: [a]\n", "lock must be a non-empty"),
        ("r:\n  event.send:\n    - tag: a\n  concurrency: 0\n", "concurrency must be"),
        ("r:\n  event.send:\n    - tag: a\n  concurrency: two\n", "concurrency must be"),
        ("include:\n  - other\n", "not supported"),
    ],
)
def test_errors_name_the_file_line_and_reaction(text: str, message: str) -> None:
    with pytest.raises(ReactionFileError) as caught:
        parse("# a comment\n" + text)
    assert isinstance(caught.value, ConfigError)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{PATH}:2: ")
    assert caught.value.line == 2


def test_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(ReactionFileError, match=r"x.sls:1: .*not a list"):
        parse("- a\n- b\n")
    assert parse("") == ()


def test_trial_mode_checks_names_but_not_values_the_event_fills_in() -> None:
    (r,) = parse("r:\n  cmd.run:\n    - cmd:\n    - timeout: 5\n", strict=False)
    assert r.options == {"cmd": None, "timeout": 5}
    with pytest.raises(ReactionFileError, match="unknown argument"):
        parse("r:\n  cmd.run:\n    - cmnd: x\n", strict=False)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (0.5, 0.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
     ("2d", 172800.0), ("1.5", 1.5), (" 10 s ", 10.0)],
)  # fmt: skip
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -1, "0s", "soon", "5 minutes", True, None, [1]])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError, match="not a positive duration"):
        parse_duration(value)


def test_yaml_scalars_in_a_command_are_kept_as_written() -> None:
    r = one("r:\n  cmd.run:\n    - cmd: [true, 1, 2.5, false, x]\n")
    assert r.options["cmd"] == ["true", "1", "2.5", "false", "x"]
