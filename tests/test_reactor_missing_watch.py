"""saltbus.reactor.missing_watch: `saltbus react` with `reactor_missing_returns:
true` against a real `saltbus serve` (Salt's job events fired as Salt fires
them): a job with a silent minion is reported once, a job whose minions all
return is not, and the open jobs survive `kill -9`: the restarted reactor takes
them back from the journal's SQLite, catch-up closes the one whose last return
came while it was down, and the other is reported once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from saltbus import Config, Listener, Sender
from saltbus.event import Event
from saltbus.journal import Journal
from saltbus.journal.records import JournalRecord
from saltbus.reactor.missing_store import OpenJobStore
from saltbus.reactor.missing_watch import MissedReturns
from saltbus.reactor.progress import bus_journal
from saltbus.wire import pack_body
from tests.serve_support import SALTBUS, ServeProcess, clean_env
from tests.test_reactor_cli import react, reactor_conf
from tests.waiting import wait_until, wait_until_async

TIMEOUT = 2.0
SETTINGS = f"reactor_missing_returns: true\nreactor_missing_returns_timeout: {TIMEOUT}\n"


def conf(tmp_path: Path) -> Path:
    return reactor_conf(
        tmp_path,
        {"noop.sls": "noop:\n  event.send:\n    - tag: app/noop\n"},
        "  - 'app/never':\n    - noop.sls\n",
        SETTINGS,
    )


def job(sender: Sender, jid: str, *minions: str) -> None:
    data = {"jid": jid, "tgt_type": "glob", "tgt": "*", "user": "root", "fun": "test.ping"}
    sender.fire(f"salt/job/{jid}/new", {**data, "arg": [], "minions": list(minions)}, ack=True)


def ret(sender: Sender, jid: str, minion: str) -> None:
    data: dict[str, Any] = {"id": minion, "jid": jid, "return": True, "success": True}
    sender.fire(f"salt/job/{jid}/ret/{minion}", data, ack=True)


def missing_events(listener: Listener, seconds: float) -> list[Event]:
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        event = listener.receive(left)
        if event is not None:
            found.append(event)
    return found


def test_a_silent_minion_is_reported_once(bus_config: Config, tmp_path: Path) -> None:
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "saltbus/job/") as reports:
        reports.connect(5)
        proc = react(bus_config, conf(tmp_path))
        try:
            with Sender(bus_config) as sender:
                job(sender, "100", "web1", "web2")
                job(sender, "101", "web1")
                ret(sender, "100", "web1")
                ret(sender, "101", "web1")
            found = missing_events(reports, TIMEOUT + 3)
        finally:
            assert proc.stop() == 0
    assert [(e.tag, e.data["missing"]) for e in found] == [("saltbus/job/100/missing", ["web2"])]
    assert "job 100 (test.ping on '*'): no return from web2" in proc.stderr


def test_open_jobs_survive_kill_9_and_catch_up_closes_what_returned_meanwhile(
    bus_config: Config, tmp_path: Path
) -> None:
    path = conf(tmp_path)
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "saltbus/job/") as reports:
        reports.connect(5)
        proc = react(bus_config, path)
        try:
            with Sender(bus_config) as sender:
                job(sender, "200", "web1", "web2")
                job(sender, "201", "db1")
                ret(sender, "200", "web1")
            with OpenJobStore(bus_journal(bus_config), "reactor") as store:

                def saved() -> bool:
                    jobs = {j.jid: j.waiting for j in store.load()[2]}
                    return jobs == {"200": {"web2"}, "201": {"db1"}}

                wait_until(saved, "both open jobs saved in the journal's SQLite", 10)
        finally:
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        with Sender(bus_config) as sender:
            ret(sender, "200", "web2")  # while no reactor runs
        proc = react(bus_config, path)
        try:
            found = missing_events(reports, TIMEOUT + 3)
        finally:
            assert proc.stop() == 0
    assert [(e.tag, e.data["missing"]) for e in found] == [("saltbus/job/201/missing", ["db1"])]
    assert "2 open jobs taken back" in proc.stderr


def test_start_reads_the_job_events_between_the_saved_state_and_the_position(
    bus_config: Config,
) -> None:
    """The state saved at seq 1, the reactor's position at 3: the return at
    seq 2 is read from the journal; the one at 4 is catch-up's, and until the
    reactor has seen the journal's last event no job is judged by the clock."""
    journal = bus_journal(bus_config)
    new = {"jid": "7", "fun": "test.ping", "tgt": "*", "minions": ["a", "b", "c"]}
    events = [
        ("salt/job/7/new", new),
        ("salt/job/7/ret/a", {"id": "a"}),
        ("app/other", {}),
        ("salt/job/7/ret/b", {"id": "b"}),
    ]
    with Journal.open(journal) as writer:
        writer.append(
            [JournalRecord.from_body(n, 1.0, pack_body(t, d)) for n, (t, d) in enumerate(events, 1)]
        )
        epoch = writer.claim_epoch()
    clock = [1_000_000.0]
    fired: list[tuple[str, dict[str, Any]]] = []

    async def main() -> tuple[set[str], list[tuple[str, dict[str, Any]]], set[str]]:
        with OpenJobStore(journal, bus_config.reactor_name) as store:
            first = MissedReturns(bus_config, lambda *a: None, lambda: clock[0])
            first.tracker.observe(*events[0], 1)
            changed, _ = first.tracker.take_changes()
            store.save([j.to_dict() for j in changed], [], epoch, 1)
        watch = MissedReturns(bus_config, lambda t, d: fired.append((t, d)), lambda: clock[0])
        await watch.start(3)
        after_start = set(watch.tracker.jobs["7"].waiting)
        clock[0] += 3600.0  # long past the deadline, but a return may be in the backlog
        await asyncio.sleep(0.2)
        early = list(fired)
        watch.observe(Event(*events[3], seq=4))
        left = set(watch.tracker.jobs["7"].waiting)
        await wait_until_async(lambda: bool(fired), "the missing event", 5)
        await watch.close()
        assert not early
        return after_start, fired, left

    after_start, reported, left = asyncio.run(main())
    assert after_start == {"b", "c"}
    assert left == {"c"}
    assert [(t, d["missing"]) for t, d in reported] == [("saltbus/job/7/missing", ["c"])]


def test_check_says_missed_returns_are_on(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SALTBUS), "react", "--config", str(conf(tmp_path)), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "missed returns: on (saltbus/job/<jid>/missing 2 s after a job, at most 10000 jobs open)"
    ) in done.stdout.splitlines()
