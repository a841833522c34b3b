"""A returner's declared options (saltbus.returners.options): each built-in
reads exactly the options it declares, refuses the others naming what it
takes, and the runner gives master_id only to a returner that takes it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config
from saltbus.errors import ConfigError
from saltbus.returners import BUILTINS
from saltbus.returners.options import Option, accepted, check_known, given, options_of
from saltbus.returners.plugins import find_returner
from saltbus.returners.runner import ReturnerRunner


class Reading(Mapping[str, Any]):
    """Options that note every key looked up (get, [], in): what a returner
    reads, whether or not it was given."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def samples(name: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Option sets that, together, take a returner down each of its paths
    (some options are read only with others: a password with a user...)."""
    return {
        "http": [
            {"url": "http://127.0.0.1:9/"},
            {"url": "https://127.0.0.1:9/", "format": "splunk", "token": "t", "username": "u"},
        ],
        "redis_stream": [{}, {"url": "redis://127.0.0.1:9/0"}],
        "rawfile_json": [{"filename": str(tmp_path / "events")}],
    }.get(name, [{}])


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_a_built_in_reads_exactly_the_options_it_declares(name: str, tmp_path: Path):
    factory = find_returner(name)
    declared = options_of(factory)
    assert declared is not None, f"{name} declares no OPTIONS"
    read: set[str] = set()
    for sample in samples(name, tmp_path):
        options = Reading(sample)
        factory(options)  # type: ignore[operator]
        read |= options.read
    assert read == accepted(declared), (
        f"{name}: read but not declared {sorted(read - accepted(declared))}, "
        f"declared but never read {sorted(accepted(declared) - read)}"
    )


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_a_built_in_refuses_an_option_it_does_not_declare(name: str, tmp_path: Path):
    factory = find_returner(name)
    sample = samples(name, tmp_path)[0]
    with pytest.raises(ConfigError, match=rf"^{name}: unknown options \['colour'\] \(it takes: "):
        factory({**sample, "colour": "blue"})  # type: ignore[operator]


def test_check_known_accepts_names_and_aliases():
    options = (Option("password", "string", "", "p", "mysql.pass", ("pass",)),)
    check_known("x", {"password": 1, "pass": 2}, options)
    with pytest.raises(
        ConfigError, match=r"x: unknown options \['passwd'\] \(it takes: password\)"
    ):
        check_known("x", {"passwd": 1}, options)


def test_given_prefers_the_name_then_the_alias():
    aliases = {"password": "pass"}
    assert given({"password": "a", "pass": "b"}, "password", aliases) == "a"
    assert given({"password": None, "pass": "b"}, "password", aliases) == "b"
    assert given({}, "password", aliases) is None
    assert given({"pass": "b"}, "host", aliases) is None


def test_options_of_a_factory_without_a_declaration_is_none():
    class Plain:
        pass

    assert options_of(Plain) is None


@pytest.mark.parametrize("declared", ["host port", ("host",), [Option("a", "b", "", "c"), 1]])
def test_a_declaration_that_is_not_options_is_an_error(declared: object):
    class Odd:
        OPTIONS = declared

    with pytest.raises(ConfigError, match=r"Odd\.OPTIONS must"):
        options_of(Odd)


def test_the_runner_gives_master_id_only_to_a_returner_that_takes_it(bus_config: Config):
    config = bus_config.replace(
        id="bus-1", returner_options={"rawfile_json": {"filename": "f"}, "syslog": {}}
    )
    runner = ReturnerRunner(config, Path("unused"))
    rawfile = options_of(find_returner("rawfile_json"))
    syslog = options_of(find_returner("syslog"))
    assert runner.options_for("rawfile_json", rawfile) == {"filename": "f"}
    assert runner.options_for("syslog", syslog) == {"master_id": "bus-1"}
    # A plugin that declares nothing gets it, as before declarations.
    assert runner.options_for("plugin") == {"master_id": "bus-1"}
