"""saltbus.cli.eventdata: the rules by which `saltbus fire`'s DATA words become
an event's data (in-process; tests/test_cli.py runs them through the command)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from saltbus.cli.eventdata import parse_data
from saltbus.errors import ConfigError


def refused(*items: str, stdin: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        parse_data(items, io.StringIO(stdin))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_values_are_json_where_they_are_json_as_written() -> None:
    assert parse_data(
        [
            "n=1",
            "neg=-3",
            "f=2.5",
            "zero=0",
            "top=18446744073709551615",
            "bottom=-9223372036854775808",
            "ok=true",
            "no=false",
            "nothing=null",
            'quoted="7"',
            "list=[1, 2.10]",
            'obj={"a": null}',
        ]
    ) == {
        "n": 1,
        "neg": -3,
        "f": 2.5,
        "zero": 0,
        "top": 2**64 - 1,
        "bottom": -(2**63),
        "ok": True,
        "no": False,
        "nothing": None,
        "quoted": "7",
        "list": [1, 2.1],  # inside JSON, JSON's own reading
        "obj": {"a": None},
    }


@pytest.mark.parametrize(
    "raw",
    [
        "1.10",
        "1e3",
        "1E3",
        "007",
        "-0",
        "1.0e2",
        " 1",
        "+1",
        "web1",
        "",
        "a=b",
        "yes",
        "no",
        "True",
        "nan",
        "inf",
        "0x10",
        "1_000",
    ],
)
def test_values_that_are_not_json_as_written_stay_text(raw: str) -> None:
    assert parse_data([f"k={raw}"]) == {"k": raw}


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_with_a_way_out(raw: str) -> None:
    message = refused(f"x={raw}")
    assert message.startswith(f"x={raw}: ") and "jq" in message
    assert f"""x='"{raw}"'""" in message
    assert parse_data([f'x="{raw}"']) == {"x": raw}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"a": NaN}', "data['a'] is nan"),
        ('{"a": [1, {"b": -Infinity}]}', "data['a'][1]['b'] is -inf"),
        ('{"a": 1e999}', "data['a'] is inf"),
        ('{"a": [18446744073709551616]}', "data['a'][0] is an integer msgpack cannot carry"),
        ('{"a": -9223372036854775809}', "data['a'] is an integer msgpack cannot carry"),
    ],
)
def test_what_json_objects_cannot_carry_is_refused_naming_where(text: str, where: str) -> None:
    assert where in refused(text)
    assert where in refused("-", stdin=text)
    assert where.replace("data", "data['v']", 1) in refused(f"v={text}")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (r'{"a": "\ud800"}', "data['a'] ('\\ud800') holds a lone surrogate"),
        (r'{"a": ["x\udfffy"]}', "data['a'][0] ('x\\udfffy') holds a lone surrogate"),
        (r'{"a": {"\udc00": 1}}', "a key in data['a'] ('\\udc00') holds a lone surrogate"),
    ],
)
def test_lone_surrogates_utf8_cannot_carry_are_refused(text: str, where: str) -> None:
    assert where in refused(text)
    assert where.replace("data", "data['v']", 1) in refused(f"v={text}")


def test_a_surrogate_pair_is_one_character() -> None:
    assert parse_data([r'{"a": "\ud83d\ude00"}', r's="\ud83d\ude00"']) == {
        "a": "\U0001f600",
        "s": "\U0001f600",
    }


def test_integers_msgpack_cannot_carry_are_refused() -> None:
    message = refused("n=18446744073709551616")
    assert message.startswith("n=18446744073709551616: ") and "2**64-1" in message
    assert "n=" in refused("n=-9223372036854775809")


@pytest.mark.parametrize(
    "items",
    [
        ["a=1", "a=2"],
        ['{"a": 1}', "a=2"],
        ["a=1", '{"a": 2}'],
        ['{"a": 1, "a": 2}'],
        ['{"x": {"a": 1, "a": 1}}'],
        ["-", "a=1"],
    ],
)
def test_a_key_given_twice_is_refused(items: list[str]) -> None:
    assert "'a' twice" in refused(*items, stdin='{"a": 0}')


def test_stdin_and_files_give_objects_of_any_size(tmp_path: Path) -> None:
    big = "x" * 300_000
    path = tmp_path / "event.json"
    path.write_text('{"from": "file", "ü": [1]}')
    data = parse_data(["-", f"@{path}", "n=1"], io.StringIO(f'{{"big": "{big}"}}'))
    assert data == {"big": big, "from": "file", "ü": [1], "n": 1}


@pytest.mark.parametrize(
    ("items", "stdin", "words"),
    [
        (["-"], "", "stdin is empty"),
        (["-"], "[1, 2]", "stdin must be a JSON object"),
        (["-"], "{bad", "stdin is not valid JSON"),
        (["-", "-"], "{}", "stdin (-) twice"),
        (["@"], "", "names no file"),
        (["l=[1,"], "", "is read as JSON"),
        (['s="open'], "", "is read as JSON"),
        (["[1]"], "", "must be a JSON object or key=value"),
        (["42"], "", "must be a JSON object or key=value"),
        (["nokey"], "", "expected key=value"),
        (["=1"], "", "expected key=value"),
        (["{bad json"], "", "not valid JSON"),
    ],
)
def test_bad_words_are_refused_in_one_line(items: list[str], stdin: str, words: str) -> None:
    assert words in refused(*items, stdin=stdin)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert f"cannot read DATA file {missing}: No such file" in refused(f"@{missing}")
    assert f"cannot read DATA file {tmp_path}" in refused(f"@{tmp_path}")
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    assert "not UTF-8" in refused(f"@{tmp_path / 'latin1.json'}")
    (tmp_path / "list.json").write_text("[]")
    assert "must be a JSON object" in refused(f"@{tmp_path / 'list.json'}")


def test_nesting_too_deep_for_the_parser_is_refused() -> None:
    assert "nested too deeply" in refused("-", stdin='{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
