"""A small disk for the tests of what a full one does: a tmpfs the test mounts
(the tests run as root, in CI too), filled to a margin and freed again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from saltbus.client import Sender
from saltbus.errors import JournalUnavailableError

PAD = "x" * 1000  # about 1 KB of data per event: a few hundred fill the margin left


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


def fire_until_refused(
    sender: Sender, tag: str, refusals: int = 1, limit: int = 20_000
) -> tuple[dict[int, int], list[str]]:
    """Acked fires of ~1 KB (data ``{"n": n, "pad": PAD}``) until the journal
    refuses ``refusals`` of them: ``{n: seq}`` of those it took, and the
    refusals' messages. Fails the test when the journal never fills."""
    acked: dict[int, int] = {}
    refused: list[str] = []
    for n in range(limit):
        try:
            acked[n] = sender.fire(tag, {"n": n, "pad": PAD}, 5, ack=True).seq or 0
        except JournalUnavailableError as exc:
            refused.append(str(exc))
            if len(refused) == refusals:
                return acked, refused
    raise AssertionError(f"the journal never filled ({len(acked)} acked, {len(refused)} refused)")
