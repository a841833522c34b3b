"""Fixtures for tests that run real Salt (``scripts/salt-venvs`` creates its venvs).

Helpers live in ``tests.interop.salt_peer_client`` (importable because ``tests`` and
``tests.interop`` are packages). Fixtures here are visible to ``tests/interop`` only.
Every test collected from this directory gets the ``interop`` marker, so
``pytest -m "not interop"`` runs the rest of the suite without Salt.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.salt_peer_client import SALT_VERSIONS, salt_publisher

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not just this directory's.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(params=SALT_VERSIONS)
def salt_version(request: pytest.FixtureRequest) -> str:
    """Each Salt generation in turn: "3006", "3007", "3008"."""
    version: str = request.param
    return version


@pytest.fixture
def salt_master_bus(salt_version: str, sock_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Salt's own master event publisher serving ``sock_dir`` for the test's duration."""
    with salt_publisher(salt_version, sock_dir, node="master") as proc:
        yield proc
