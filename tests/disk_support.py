"""A small disk for the tests of what a full one does: a tmpfs the test mounts
(the tests run as root, in CI too), filled to a margin and freed again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(parent: Path, size_mib: int) -> Iterator[Path]:
    """A ``size_mib`` MiB tmpfs mounted at ``parent/disk`` for the block; unmounted after."""
    mount = parent / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", os.fspath(mount)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount
    finally:
        # Lazy: a process the test failed to stop must not keep it mounted for ever.
        subprocess.run(["umount", "-l", os.fspath(mount)], check=False, capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all of ``disk``'s free space but ``leave`` bytes; returns the filler file."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler
