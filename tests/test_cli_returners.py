"""``saltbus returners [NAME]``: the built-ins and real installed plugins (a
dist-info with entry points on PYTHONPATH), each returner's options as it
declares them, the README's lists checked against the same declarations, and
a light start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from saltbus.cli.main import main
from saltbus.returners import BUILTINS, describe
from saltbus.returners.options import Option
from tests.returners_support import install_plugin
from tests.serve_support import SALTBUS, clean_env
from tests.test_package import heavy_among, loaded_modules

README = Path(__file__).resolve().parent.parent / "README.md"

# A plugin that declares its options, beside install_plugin's that do not.
_DECLARING = '''
from saltbus.returners import Option

class Kafkaish:
    """Sends events to a pretend queue."""

    OPTIONS = (
        Option("brokers", "list", "localhost:9092", "where to send", "kafka.brokers"),
        Option("topic", "string", "salt", "the topic", aliases=("queue",)),
    )

    def __init__(self, options):
        self.options = options

    def event_return(self, events):
        pass
'''


def saltbus(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(SALTBUS), "returners", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    where = install_plugin(tmp_path / "site")
    (where / "sbtest_declaring.py").write_text(_DECLARING)
    info = where / "sbtest_declaring-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbtest-declaring\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text(
        "[saltbus.returners]\nkafkaish = sbtest_declaring:Kafkaish\n"
    )
    return where


def test_lists_every_built_in_with_what_it_does():
    result = saltbus()
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in BUILTINS:
        assert re.fullmatch(rf"{name} +built-in +\S.*", rows[name]), rows[name]
    assert "events as RFC 5424 messages" in rows["syslog"]
    assert "`saltbus returners NAME`" in result.stdout


def test_lists_plugins_and_says_why_one_cannot_be_used(plugins: Path):
    result = saltbus(pythonpath=plugins)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^kafkaish +plugin +Sends events to a pretend queue\.$", out, re.M)
    assert re.search(r"^jsonfile +plugin +Appends each event as a JSON line", out, re.M)
    assert re.search(r"^modret +plugin", out, re.M)
    lines = out.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("broken ")]
    assert re.fullmatch(
        r" +cannot be used: returner 'broken' .*sbtest_missing_module.*", lines[at + 1]
    )


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["returners", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_a_built_in_s_options_are_its_declaration(capsys: pytest.CaptureFixture[str], name: str):
    declared = describe(name).options
    assert declared, name
    answer = json.loads(in_process(capsys, name, "--json"))
    assert answer["origin"] == "built-in" and answer["problem"] is None
    assert [o["name"] for o in answer["options"]] == [o.name for o in declared]
    text = in_process(capsys, name)
    assert text.startswith(f"{name} (built-in): ")
    for option in declared:
        facts = re.search(rf"^  {option.name} +(.*)\n +(.*)$", text, re.M)
        assert facts, (name, option.name)
        assert facts.group(1).startswith(option.type)
        assert facts.group(2) == option.meaning
        if option.default:
            assert f"default {option.default}" in facts.group(1)
        if option.salt:
            assert f"Salt: {option.salt}" in facts.group(1)


def test_salt_s_keys_and_names_are_shown(capsys: pytest.CaptureFixture[str]):
    text = in_process(capsys, "mysql")
    assert re.search(r"^  password +string; Salt: mysql\.pass; also: pass$", text, re.M)
    assert "Salt: rawfile_json.filename" in in_process(capsys, "rawfile_json")


def test_a_plugin_s_options_or_that_it_declares_none(plugins: Path):
    text = saltbus("kafkaish", pythonpath=plugins).stdout
    assert text.startswith(
        "kafkaish (plugin sbtest_declaring:Kafkaish (sbtest-declaring 2.0)): "
        "Sends events to a pretend queue.\n"
    )
    assert "  brokers  list; default localhost:9092; Salt: kafka.brokers\n" in text
    assert "  topic    string; default salt; also: queue\n" in text
    none = saltbus("jsonfile", pythonpath=plugins)
    assert none.returncode == 0
    assert "It declares no options" in none.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mongo", "no returner named 'mongo' (available: "),
        ("broken", "returner 'broken' (sbtest_missing_module:Nothing) cannot be loaded"),
    ],
)
def test_a_name_that_is_no_usable_returner_is_one_line(plugins: Path, name: str, message: str):
    result = saltbus(name, pythonpath=plugins)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"saltbus: error: {message}")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_bad_options_declarations_are_reported(tmp_path: Path):
    where = tmp_path / "site"
    where.mkdir()
    (where / "sbtest_bad.py").write_text(
        'class Bad:\n    """Declares nonsense."""\n    OPTIONS = ("host", "port")\n'
        "    def __init__(self, options): pass\n    def event_return(self, events): pass\n"
    )
    info = where / "sbtest_bad-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbtest-bad\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[saltbus.returners]\nbad = sbtest_bad:Bad\n")
    result = saltbus("bad", pythonpath=where)
    assert result.returncode == 2
    assert result.stderr == (
        "saltbus: error: Bad.OPTIONS must hold saltbus.returners.Option items\n"
    )


def test_help_explains_the_command():
    result = subprocess.run(
        [str(SALTBUS), "returners", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=True,
    )
    for words in ("NAME", "returner_options", "Salt's own returner", "saltbus.returners", "--json"):
        assert words in result.stdout, words
    overview = subprocess.run(
        [str(SALTBUS), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert re.search(r"^ +returners +list the returners", overview.stdout, re.M)


def test_the_readme_lists_exactly_each_built_in_s_options():
    section = README.read_text().split("\n## Returners\n", 1)[1].split("\n### ", 1)[0]
    bullets = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^- `(\w+)`.*?(?=^- |\Z)", section, re.M | re.S)
    }
    for name in BUILTINS:
        listed = re.search(r"Options:\s+((?:`\w+`,?\s*)+)\.", bullets[name])
        assert listed, f"the README's {name} entry has no 'Options: ...' list"
        names = re.findall(r"`(\w+)`", listed.group(1))
        declared = describe(name).options or ()
        assert names == [o.name for o in declared], name


def test_starting_the_command_s_help_stays_light():
    modules = loaded_modules(
        textwrap.dedent(
            """
            import contextlib, io
            from saltbus.cli.main import main
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(["returners", "--help"])
                except SystemExit:
                    pass
            """
        )
    )
    assert "saltbus.cli.returners" in modules
    assert not heavy_among(modules), heavy_among(modules)


def test_option_is_the_public_declaration():
    # What a plugin imports is what the built-ins use.
    from saltbus import returners  # noqa: PLC0415

    assert returners.Option is Option
