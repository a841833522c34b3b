"""The ``saltbus`` package (saltbus/__init__.py, saltbus.lazy): its public names
are all there, and importing it, or starting a light command, does not load
what that does not use.

What is loaded is looked at in a fresh interpreter each time: this test
process has long imported everything.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import saltbus

# The publisher, the asyncio client and the stacks behind the other commands
# and the extras: none of them is needed to import saltbus or to fire an event.
HEAVY = (
    "asyncio",
    "sqlite3",
    "saltbus.server",
    "saltbus.client.aio",
    "saltbus.journal.store",
    "saltbus.returners",
    "saltbus.reactor",
    "saltbus.cluster",
    "saltbus.http.app",
    "saltbus.http.tokens",
    "jinja2",
    "nats",
    "psycopg",
    "starlette",
    "uvicorn",
    "uvloop",
    "importlib.metadata",
)

LAZY_PACKAGES = ("saltbus", "saltbus.client", "saltbus.journal", "saltbus.http")


def loaded_modules(code: str) -> set[str]:
    """The modules loaded by ``code`` run in a new interpreter (which shares
    this one's sys.path, so it imports the saltbus under test)."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def heavy_among(modules: set[str]) -> list[str]:
    # A module's package is loaded before it: the top of each stack suffices.
    return [name for name in HEAVY if name in modules]


def test_import_saltbus_loads_neither_the_server_nor_asyncio() -> None:
    modules = loaded_modules("import saltbus")
    assert "saltbus" in modules
    assert not heavy_among(modules), heavy_among(modules)


def test_a_blocking_client_does_not_load_asyncio_or_the_server() -> None:
    modules = loaded_modules(
        "import saltbus\nsaltbus.Listener, saltbus.Sender, saltbus.Config, saltbus.Event"
    )
    assert "saltbus.client.listener" in modules
    assert not heavy_among(modules), heavy_among(modules)


@pytest.mark.parametrize(
    "argv",
    [
        ["fire", "--help"],
        # No publisher there: fire gives up after its timeout, having run all it runs.
        ["fire", "--sock-dir", "{sock_dir}", "--timeout", "0.05", "test/tag", "n=1"],
        ["listen", "--help"],
    ],
    ids=["fire --help", "fire with no bus", "listen --help"],
)
def test_a_light_command_loads_no_other_command_s_stack(argv: list[str], sock_dir: Path) -> None:
    argv = [arg.format(sock_dir=sock_dir) for arg in argv]
    modules = loaded_modules(
        f"""
        import contextlib, io
        from saltbus.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main({argv!r})
            except SystemExit:
                pass
        """
    )
    assert "saltbus.cli.main" in modules
    assert not heavy_among(modules), heavy_among(modules)


def test_the_heavy_names_load_what_the_checks_above_look_for() -> None:
    modules = loaded_modules("import saltbus\nsaltbus.Server, saltbus.AsyncClient")
    assert {"saltbus.server", "asyncio", "saltbus.client.aio"} <= set(heavy_among(modules))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            # Defined where the package says, not another of the module's names.
            assert value.__name__ == name, (package, name)
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_star_import_and_every_name_in_a_fresh_interpreter(package: str) -> None:
    # Here each name is resolved for the first time, through __getattr__.
    loaded_modules(
        f"""
        from {package} import *
        import {package} as package
        missing = [n for n in package.__all__ if n not in globals()]
        assert not missing, missing
        """
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'saltbus' has no attribute 'Nope'"):
        saltbus.Nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError):
        from saltbus.client import Nope  # type: ignore[attr-defined]  # noqa: F401, PLC0415


def test_a_resolved_name_is_kept_in_the_package() -> None:
    module = importlib.import_module("saltbus.client")
    listener = module.Listener
    assert vars(module)["Listener"] is listener
