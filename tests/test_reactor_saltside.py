"""saltbus.reactor.saltside: finding Salt's python (setting, salt-master's `#!`,
an onedir layout, a python3 that imports salt) and the master's and minion's
config files as Salt's tools find them; the helper failing to start says why.
(tests/interop/test_interop_salt_reactions.py runs the helper with real Salt.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from saltbus import Config
from saltbus.config.saltfiles import salt_config_role
from saltbus.reactor.errors import SaltUnreachableError
from saltbus.reactor.saltside import (
    SaltLink,
    find_salt_python,
    master_config_path,
    minion_config_path,
)

BASE = Config.load(env={}, overrides={"sock_dir": "/nonexistent"})


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_setting_wins(tmp_path: Path) -> None:
    python = executable(tmp_path / "py", "")
    found = find_salt_python(BASE.replace(salt_python=python), env={"PATH": ""})
    assert (found.path, found.how) == (python, "the salt_python setting")
    with pytest.raises(SaltUnreachableError, match=r"salt_python .* is not an executable"):
        find_salt_python(BASE.replace(salt_python=tmp_path / "none"), env={"PATH": ""})


def test_the_interpreter_of_salt_master_on_path(tmp_path: Path) -> None:
    python = executable(tmp_path / "venv" / "bin" / "python3.10", "")
    master = executable(tmp_path / "venv" / "bin" / "salt-master", f"#!{python}\nimport salt\n")
    found = find_salt_python(BASE, env={"PATH": str(master.parent)})
    assert found.path == python and found.how == f"the interpreter of {master}"


def test_an_onedir_package(tmp_path: Path) -> None:
    # /usr/bin/salt-call links to /opt/saltstack/salt/salt-call, a shell script
    # beside bin/python3.10.
    onedir = tmp_path / "opt" / "saltstack" / "salt"
    python = executable(onedir / "bin" / "python3.10", "")
    script = executable(onedir / "salt-call", '#!/bin/sh\nexec "$(dirname "$0")/bin/python3.10"\n')
    bin_dir = tmp_path / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "salt-call").symlink_to(script)
    found = find_salt_python(BASE, env={"PATH": str(bin_dir)})
    assert found.path == python


def test_a_python3_that_imports_salt(tmp_path: Path) -> None:
    # A python3 whose `import salt.client` succeeds: a stand-in for a distro's.
    fake = executable(tmp_path / "python3", "#!/bin/sh\nexit 0\n")
    found = find_salt_python(BASE, env={"PATH": str(tmp_path)})
    assert found.path == fake and "imports salt" in found.how
    executable(tmp_path / "python3", "#!/bin/sh\nexit 1\n")
    with pytest.raises(SaltUnreachableError) as info:
        find_salt_python(BASE, env={"PATH": str(tmp_path)})
    assert str(info.value) == (
        "no Salt found for the local/runner/wheel reactions: set salt_python to the python "
        "Salt runs on (e.g. /opt/saltstack/salt/bin/python3), or put salt-master on PATH"
    )


def test_config_files_as_salts_tools_find_them(tmp_path: Path) -> None:
    assert master_config_path(BASE, env={}) == Path("/etc/salt/master")
    assert master_config_path(BASE, env={"SALT_MASTER_CONFIG": "/x/m"}) == Path("/x/m")
    mine = BASE.replace(salt_master_config=tmp_path / "m", salt_minion_config=tmp_path / "n")
    assert master_config_path(mine, env={"SALT_MASTER_CONFIG": "/x/m"}) == tmp_path / "m"
    assert minion_config_path(BASE, env={}) == Path("/etc/salt/minion")
    assert minion_config_path(BASE, env={"SALT_MINION_CONFIG": "/x/n"}) == Path("/x/n")
    assert minion_config_path(mine, env={}) == tmp_path / "n"
    assert salt_config_role(frozenset({"interface", "reactor"})) == "master"
    assert salt_config_role(frozenset({"master", "id"})) == "minion"
    assert salt_config_role(frozenset({"sock_dir", "reactor"})) is None


def test_a_python_without_salt_says_so(tmp_path: Path) -> None:
    """This interpreter has no Salt: the helper reports it, in one line."""
    (tmp_path / "master").write_text("interface: 127.0.0.1\n")
    config = BASE.replace(salt_python=Path(sys.executable), salt_master_config=tmp_path / "master")

    async def main() -> str:
        link = SaltLink(config, env={})
        try:
            await link.call({"op": "check"})
        except SaltUnreachableError as exc:
            return str(exc)
        finally:
            await link.close()
        raise AssertionError("no error")

    assert asyncio.run(main()) == (
        f"Salt's python {sys.executable} (the salt_python setting) could not load the master "
        f"config {tmp_path / 'master'}: {sys.executable} cannot import salt"
    )


def test_a_failed_start_is_not_retried_for_every_reaction(tmp_path: Path) -> None:
    """A burst of reactions with a broken Salt starts its interpreter once."""
    counter = tmp_path / "starts"
    python = executable(tmp_path / "python3", f"#!/bin/sh\necho started >> {counter}\nexit 1\n")
    (tmp_path / "master").write_text("interface: 127.0.0.1\n")
    config = BASE.replace(salt_python=python, salt_master_config=tmp_path / "master")

    async def main() -> list[str]:
        link = SaltLink(config, env={})
        errors = []
        try:
            for _ in range(20):
                try:
                    await link.call({"op": "check"})
                except SaltUnreachableError as exc:
                    errors.append(str(exc))
        finally:
            await link.close()
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 20 and len(set(errors)) == 1
    assert "could not load the master config" in errors[0]
    assert counter.read_text() == "started\n"
