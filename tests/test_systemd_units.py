"""The unit files in packaging/systemd and their example configs in packaging/config.

``systemd-analyze verify`` checks each unit as systemd reads it (an unknown key
or a bad value is only a warning there, so any output fails the test), with
its ExecStart pointing at this venv's real ``saltbus``: verify also checks the
command exists. The commands' flags are parsed by saltbus's own parser, and
each example config is loaded by Config with every key one it knows.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from saltbus.cli.main import build_parser
from saltbus.config import Config
from tests.serve_support import SALTBUS

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
CONFIGS = ROOT / "packaging" / "config"
INSTALLED = "/opt/saltbus/bin/saltbus"  # where the README installs saltbus
# unit -> the saltbus command it runs
COMMANDS = {
    "saltbus.service": "serve",
    "saltbus-react.service": "react",
    "saltbus-http.service": "http",
    "saltbus-exporter.service": "exporter",
}
NOTIFYING = ("serve", "react", "http")  # the commands that speak sd_notify
FIELD_NAMES = set(Config.__dataclass_fields__)


def service(unit: str) -> dict[str, list[str]]:
    """The [Service] section's keys, each with its values in order."""
    section = ""
    values: dict[str, list[str]] = {}
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_every_command_has_its_unit_and_example_config() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(COMMANDS)
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(COMMANDS.values())


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/system-deps"
    for unit in COMMANDS:
        text = (UNITS / unit).read_text()
        assert INSTALLED in text
        (tmp_path / unit).write_text(text.replace(INSTALLED, os.fspath(SALTBUS)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *(os.fspath(tmp_path / unit) for unit in COMMANDS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize("unit", sorted(COMMANDS))
def test_units_are_hardened(unit: str) -> None:
    keys = service(unit)
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
    }.items():
        assert keys.get(key) == [value], f"{unit}: {key}={keys.get(key)}"
    assert keys["User"] != ["root"]
    assert keys["Restart"] == ["on-failure"]


@pytest.mark.parametrize("unit", sorted(COMMANDS))
def test_the_command_names_its_example_config(unit: str) -> None:
    argv = shlex.split(service(unit)["ExecStart"][0])
    assert argv[0] == INSTALLED
    assert argv[1] == COMMANDS[unit]
    assert argv[argv.index("--config") + 1] == f"/etc/saltbus/{COMMANDS[unit]}.yaml"


@pytest.mark.parametrize("unit", [u for u, c in COMMANDS.items() if c in NOTIFYING])
def test_serve_react_and_http_units_are_type_notify_with_a_watchdog(unit: str) -> None:
    keys = service(unit)
    assert keys["Type"] == ["notify"]
    assert keys["WatchdogSec"] == ["30s"]
    # Their command lines are ones saltbus accepts.
    args = build_parser().parse_args(shlex.split(keys["ExecStart"][0])[1:])
    assert args.config == Path(f"/etc/saltbus/{COMMANDS[unit]}.yaml")


def test_the_bus_lives_in_the_runtime_and_state_directories() -> None:
    keys = service("saltbus.service")
    config = Config.load(CONFIGS / "serve.yaml", env={})
    assert config.sock_dir == Path("/run") / keys["RuntimeDirectory"][0]
    assert config.data_dir == Path("/var/lib") / keys["StateDirectory"][0]
    # The other saltbus units use that bus, and keep what they write in the state directory.
    for name in ("react", "http"):
        other = Config.load(CONFIGS / f"{name}.yaml", env={})
        assert (other.sock_dir, other.data_dir) == (config.sock_dir, config.data_dir)
        unit = f"saltbus-{name}.service"
        assert service(unit)["StateDirectory"] == keys["StateDirectory"]
        assert "RuntimeDirectory" not in service(unit)  # removed when *that* unit stops


@pytest.mark.parametrize("name", sorted(COMMANDS.values()))
def test_example_configs_load_and_use_only_real_option_names(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    document = yaml.safe_load(path.read_text())
    unknown = set(document) - FIELD_NAMES
    assert not unknown, f"{path}: not saltbus options: {unknown}"
    config = Config.load(path, env={})
    assert config.log_level == "info"
    if name == "react":
        assert config.reactor
