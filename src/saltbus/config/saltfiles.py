"""Telling a Salt daemon's config file from saltbus's own.

saltbus reads Salt's option names, so ``--config`` may be the master's (or a
minion's) own file. Some of its keys are then Salt's alone: saltbus does not,
for one, write its log into Salt's ``log_file``.
"""

from __future__ import annotations

from typing import Final

# Keys only a Salt master's config file has: a --config file with one of them
# is the master's own (saltbus reads its keys, Salt the rest).
SALT_MASTER_KEYS: Final = frozenset(
    (
        "interface",
        "publish_port",
        "ret_port",
        "root_dir",
        "pki_dir",
        "cachedir",
        "file_roots",
        "pillar_roots",
        "auto_accept",
        "open_mode",
        "master_job_cache",
        "external_auth",
        "worker_threads",
        "user",
    )
)


def salt_config_role(keys: set[str] | frozenset[str]) -> str | None:
    """Whose Salt config file has these top-level keys: "minion" (it names
    its ``master``), "master" (it has a master's keys), or None (saltbus's)."""
    if "master" in keys:
        return "minion"
    if keys & SALT_MASTER_KEYS:
        return "master"
    return None
