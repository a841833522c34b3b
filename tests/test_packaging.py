"""The wheel and sdist, built from what a clean clone holds, installed in a fresh
virtual environment, and used: ``saltbus --version``, ``python -m saltbus``,
and a fire and a listen through the installed ``saltbus``.

Offline and quick: the build runs without isolation (``build`` and
setuptools>=77 are in the dev extra), and the fresh venv finds the
dependencies in this test's own environment through a ``.pth`` line (its own
site-packages first, so the installed wheel is the saltbus it imports); pip
installs the wheel from the built files only, and every requirement of
``saltbus[all]`` is checked against what that venv can import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.errors import SaltbusError
from tests.serve_support import clean_env

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WAIT = 30.0
EXTRAS = ("fast", "reactor", "http", "cluster", "postgres", "all")
# Run in the fresh venv: each requirement of saltbus[all], met by an installed version.
CHECK_REQUIREMENTS = f"""
import importlib.metadata as md
from packaging.requirements import Requirement
missing = []
for text in md.requires("saltbus"):
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({{"extra": e}}) for e in {EXTRAS!r}):
        continue
    if req.name == "saltbus":
        continue
    try:
        found = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(text)
        continue
    if not req.specifier.contains(found, prereleases=True):
        missing.append(f"{{text}} (found {{found}})")
print("missing:", missing)
"""


def env() -> dict[str, str]:
    """The test run's environment, without its PYTHONPATH to the source tree."""
    return {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [os.fspath(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env(),
        check=False,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    log: str


@dataclass(frozen=True)
class Installed:
    bin: Path
    python: Path
    site: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel and sdist of a copy of the files git tracks (a clean clone of
    this tree, with its uncommitted edits)."""
    clone = tmp_path_factory.mktemp("clone")
    tracked = run("git", "-C", ROOT, "ls-files", "-z").split("\0")
    for name in filter(None, tracked):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the tree is not there
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    dist = tmp_path_factory.mktemp("dist")
    log = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, clone)
    (wheel,) = dist.glob("saltbus-*.whl")
    (sdist,) = dist.glob("saltbus-*.tar.gz")
    return Built(wheel, sdist, log)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'), end='')"))
    (site / "zz-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-index",
        "--find-links",
        built.wheel.parent,
        # The dependencies are there; this environment's own saltbus must not count.
        "--ignore-installed",
        "--no-deps",
        "saltbus[all]",
    )
    return Installed(venv / "bin", python, site)


def test_the_build_uses_the_current_license_form_without_warnings(built: Built) -> None:
    assert "License classifiers are deprecated" not in built.log
    assert "project.license` as a TOML table is deprecated" not in built.log
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        info = f"saltbus-{VERSION}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        license_text = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    for name in ("saltbus/py.typed", "saltbus/__main__.py", "saltbus/http/static/index.html"):
        assert name in names, f"{name} missing from the wheel"
    assert not [n for n in names if n.startswith("tests/")]


def test_the_sdist_holds_what_a_build_needs(built: Built, tmp_path: Path) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/saltbus/__init__.py"} <= names
    # ... and builds a wheel by itself.
    run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "-o", tmp_path, built.sdist)
    assert list(tmp_path.glob(f"saltbus-{VERSION}-*.whl"))


def test_the_installed_saltbus_is_the_wheel_and_all_its_extras_are_met(
    installed: Installed,
) -> None:
    out = run(
        installed.python, "-c", "import saltbus; print(saltbus.__file__, saltbus.__version__)"
    )
    where, version = out.split()
    assert Path(where).is_relative_to(installed.site)
    assert version == VERSION
    assert run(installed.python, "-c", CHECK_REQUIREMENTS).strip() == "missing: []"


def test_version_and_python_m_saltbus(installed: Installed) -> None:
    assert run(installed.bin / "saltbus", "--version").strip() == f"saltbus {VERSION}"
    help_text = run(installed.python, "-m", "saltbus", "--help")
    assert help_text.startswith("usage: saltbus ")
    assert "completion" in help_text


def test_fire_and_listen_through_the_installed_command(
    installed: Installed, sock_dir: Path
) -> None:
    saltbus = os.fspath(installed.bin / "saltbus")
    bus = ["--sock-dir", os.fspath(sock_dir / "bus"), "--data-dir", os.fspath(sock_dir / "data")]
    config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus"})
    serve = subprocess.Popen([saltbus, "serve", *bus], stderr=subprocess.PIPE, text=True, env=env())
    listen = None
    try:
        assert serve.stderr is not None
        assert "Ctrl-C to stop" in serve.stderr.readline()
        listen = subprocess.Popen(
            [saltbus, "listen", *bus, "--json", "--count", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        deadline = time.monotonic() + WAIT
        while not _subscribed(config, listen.pid):
            assert time.monotonic() < deadline, "the listener never subscribed"
            assert listen.poll() is None, listen.communicate()
            time.sleep(0.05)
        run(saltbus, "fire", "pkg/installed", "n=1", *bus[:2])
        out, err = listen.communicate(timeout=WAIT)
        assert listen.returncode == 0, err
        event = json.loads(out)
        assert (event["tag"], event["data"]["n"]) == ("pkg/installed", 1), out
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(WAIT) == 0
    finally:
        for proc in (listen, serve):
            if proc is not None:
                proc.kill()
                proc.wait(WAIT)


def _subscribed(config: Config, pid: int) -> bool:
    try:
        stats = fetch_stats(config, 1.0)
    except SaltbusError:
        return False
    return any(s["peer"].startswith(f"pid {pid} ") for s in stats["subscribers"])
