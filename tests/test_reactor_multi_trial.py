"""`saltbus react --test-events FILE`: the rules on a simulated clock, as a
real command: what fires when, with the reactions it would run; nothing is
run and no bus is needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.serve_support import SALTBUS, clean_env

CONF = """\
reactor:
  - 'saltbus/rule/*': [page.sls]
  - 'app/*': [each.sls]
reactor_rules:
  nohs:
    not:
      - {name: start, tag: 'salt/minion/*/start'}
      - {tag: 'salt/job/*/ret/*', when: "data['fun'] == 'state.highstate'"}
    key: data['id']
    within: 5m
  storm:
    tag: salt/auth
    accumulate_within: 1m
    threshold: 2
    key: data['id']
"""
PAGE = """\
page:
  event.send:
    - tag: alert/{{ data['rule'] }}/{{ data['key'] }}
    - data: {first: "{{ events[0].tag }}", count: {{ data['count'] }}}
"""
EACH = "each:\n  event.send:\n    - tag: seen/{{ tag }}\n"


def run(tmp_path: Path, events: str, *more: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "reactor.conf").write_text(CONF)
    (tmp_path / "page.sls").write_text(PAGE)
    (tmp_path / "each.sls").write_text(EACH)
    (tmp_path / "events.yaml").write_text(events)
    conf, path = tmp_path / "reactor.conf", tmp_path / "events.yaml"
    command = [str(SALTBUS), "react", "--config", str(conf), "--sock-dir", str(tmp_path / "s")]
    return subprocess.run(
        [*command, "--test-events", str(path), *more],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_prints_what_fires_when(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        """\
- {at: 0, tag: salt/minion/web1/start, data: {id: web1}}
- {at: 2, tag: salt/minion/web2/start, data: {id: web2}}
- {at: 1, tag: app/x, data: {}}
- {at: 120, tag: salt/job/1/ret/web2, data: {id: web2, fun: state.highstate}}
- {at: 130, tag: salt/auth, data: {id: m}}
- {at: 131, tag: salt/auth, data: {id: m}}
""",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("+    0.000s  event salt/minion/web1/start")
    assert lines[1] == "+    1.000s  event app/x {}"  # in time order
    assert "WOULD RUN event.send" in lines[2] and "seen/app/x" in lines[2]
    fired = [line for line in lines if "FIRES" in line]
    assert fired == [
        '+  131.000s  rule storm FIRES (accumulate_within, key "m", count 2, events: event, event)',
        '+  300.000s  rule nohs FIRES (not, key "web1", count 1, events: start)',
    ]
    after = lines[lines.index(fired[1]) + 1]
    assert "alert/nohs/web1" in after and '"first": "salt/minion/web1/start"' in after


def test_iso_times_and_a_bad_file(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        "- {at: '2026-01-01T10:00:00Z', tag: salt/minion/a/start, data: {id: a}}\n",
    )
    assert done.returncode == 0, done.stderr
    assert "+  300.000s 2026-01-01T10:05:00.000+00:00  rule nohs FIRES" in done.stdout
    done = run(tmp_path, "- {at: yesterday, tag: t}\n")
    assert done.returncode != 0
    assert done.stderr.strip().endswith(
        "events.yaml: event 1: at 'yesterday' is not seconds or an ISO time"
    )
