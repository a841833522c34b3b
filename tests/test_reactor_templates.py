"""saltbus.reactor.templates: Jinja2 (sandboxed) then YAML, with file and line in
every error; ``when:`` conditions."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.templates import ReactionTemplate, compile_condition

DEPLOY = """\
{% if data['env'] == 'prod' %}
write_marker:
  cmd.run:
    - cmd: ["sh", "-c", "echo {{ data['version'] }} > /var/tmp/deployed"]
{% endif %}
tell_others:
  event.send:
    - tag: app/deploy/seen
    - data: {version: "{{ data['version'] }}", from: "{{ tag }}"}
"""


def template(tmp_path: Path, text: str) -> ReactionTemplate:
    path = tmp_path / "r.sls"
    path.write_text(text)
    return ReactionTemplate(path)


def test_rendered_with_tag_and_data(tmp_path: Path) -> None:
    t = template(tmp_path, DEPLOY)
    prod = t.render("app/deploy/web", {"env": "prod", "version": "1.2"})
    assert [r.name for r in prod] == ["write_marker", "tell_others"]
    assert prod[0].options["cmd"][2] == "echo 1.2 > /var/tmp/deployed"
    assert prod[0].line == 2 and prod[1].line == 6
    assert prod[1].options["data"] == {"version": "1.2", "from": "app/deploy/web"}
    test = t.render("app/deploy/web", {"env": "test", "version": "1.3"})
    assert [r.name for r in test] == ["tell_others"]


def test_same_rendered_text_is_parsed_once(tmp_path: Path) -> None:
    t = template(tmp_path, "a:\n  event.send:\n    - tag: x/{{ data['n'] }}\n")
    first = t.render("t", {"n": 1})
    assert t.render("t", {"n": 1}) is first
    assert t.render("t", {"n": 2}) is not first


def test_salt_json_and_yaml_filters(tmp_path: Path) -> None:
    t = template(
        tmp_path,
        "a:\n  event.send:\n    - tag: x\n"
        "    - data: {j: {{ data['m']|json }}, y: {{ data['m']|yaml }}}\n",
    )
    (r,) = t.render("t", {"m": {"b": [1, 2], "a": "s"}})
    assert r.options["data"] == {"j": {"a": "s", "b": [1, 2]}, "y": {"a": "s", "b": [1, 2]}}


def test_jinja_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ReactionFileError, match=r"r\.sls:3: Jinja2: .*") as caught:
        template(tmp_path, "a:\n  event.send:\n    - tag: {{ data[ }}\n")
    assert caught.value.line == 3


def test_render_error_names_file_and_line(tmp_path: Path) -> None:
    t = template(
        tmp_path, "# Salt's execution modules are not there\n{{ salt['pillar.get']('x') }}\n"
    )
    with pytest.raises(ReactionFileError, match=r"r\.sls:2: Jinja2: .*salt"):
        t.render("t", {})


def test_yaml_error_after_rendering_names_the_line(tmp_path: Path) -> None:
    t = template(tmp_path, "a:\n  event.send:\n    - tag: x\n   - data: {{ data }}\n")
    with pytest.raises(ReactionFileError, match=r"r\.sls:4: YAML \(after Jinja2\)"):
        t.render("t", {})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ReactionFileError, match="cannot read"):
        ReactionTemplate(tmp_path / "missing.sls")


def test_trial_render_without_an_event(tmp_path: Path) -> None:
    assert [r.name for r in template(tmp_path, DEPLOY).trial("app/*")] == ["tell_others"]
    # Arithmetic on the event's data cannot be done without one: checked later.
    assert template(tmp_path, "a: {{ data['n'] + 1 }}\n").trial("t") is None
    # A shape error does not depend on the data: it is reported now.
    with pytest.raises(ReactionFileError, match="unknown action"):
        template(tmp_path, "a:\n  evnt.send:\n    - tag: {{ data['t'] }}\n").trial("t")


def test_when_conditions() -> None:
    assert compile_condition("data['level'] == 'crit'")("t", {"level": "crit"})
    assert not compile_condition("data['level'] == 'crit'")("t", {"level": "info"})
    assert not compile_condition("data['missing'] == 1")("t", {})
    assert compile_condition("tag.startswith('app/') and data.n > 2")("app/x", {"n": 3})
    with pytest.raises(jinja2.UndefinedError, match="missing"):
        compile_condition("data['missing'] > 1")("t", {})
    with pytest.raises(jinja2.TemplateSyntaxError):
        compile_condition("data[")


def test_when_runs_in_the_sandbox() -> None:
    escape = compile_condition("().__class__.__bases__[0].__subclasses__()")
    with pytest.raises(jinja2.exceptions.SecurityError):
        escape("t", {})


def test_lines_are_source_lines_when_jinja_drops_some(tmp_path: Path) -> None:
    text = (
        "{% if data['id'] == 'db1' %}\n"
        "highstate:\n  local.state.apply:\n    - tgt: db1\n"
        "{% endif %}\n"
        "record:\n  cmd.run:\n    - cmd: [x]\n"
    )
    t = template(tmp_path, text)
    assert [(r.name, r.line) for r in t.render("t", {"id": "web1"})] == [("record", 6)]
    assert [(r.name, r.line) for r in t.render("t", {"id": "db1"})] == [
        ("highstate", 2),
        ("record", 6),
    ]
    t = template(tmp_path, text + "   - static error\n")
    with pytest.raises(ReactionFileError, match=r"r\.sls:9: YAML"):
        t.render("t", {"id": "web1"})
    t = template(tmp_path, text + "   - error {{ data.id }}\n")
    with pytest.raises(ReactionFileError, match=r"r\.sls: YAML.*as rendered: '   - error web1'"):
        t.render("t", {"id": "web1"})


def test_a_file_without_jinja_is_not_rendered_per_event(tmp_path: Path) -> None:
    static = template(tmp_path, "a:\n  event.send:\n    - tag: x\n")
    assert static.static and not template(tmp_path, "a: {# c #}\n").static
    first = static.render("t", {"n": 1})
    assert static.render("u", {"n": 2}) is first
