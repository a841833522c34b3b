"""saltbus.cli.react_rules: `saltbus react --check` lists the rules and the
glob that handles each; `saltbus stats` shows their counts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from saltbus.cli.react_rules import describe_stats
from tests.serve_support import SALTBUS, clean_env
from tests.test_reactor_multi_trial import run


def test_check_lists_the_rules_and_what_handles_them(tmp_path: Path) -> None:
    run(tmp_path, "- {at: 0, tag: t}\n")
    conf = tmp_path / "reactor.conf"
    done = subprocess.run(
        [
            str(SALTBUS),
            "react",
            "--config",
            str(conf),
            "--sock-dir",
            str(tmp_path / "s"),
            "--check",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "rule nohs: not 300 s over salt/minion/*/start, salt/job/*/ret/*; fires "
        "saltbus/rule/nohs (handled by 'saltbus/rule/*')" in done.stdout
    )
    assert "rule storm: accumulate_within 60 s, threshold 2 over salt/auth" in done.stdout


def test_stats_show_each_rule() -> None:
    rule = {"open": 3, "evicted": 2, "expired": 0, "cancelled": 1, "errors": 0}
    stats = {"rules": {"fired": 7, "rules": {"b": rule, "a": dict(rule, open=0, evicted=0)}}}
    assert describe_stats(stats) == [
        "  rules: 7 fired; a 0 open, 1 cancelled; b 3 open, 2 evicted, 1 cancelled"
    ]
    assert describe_stats({"events": 1}) == []
