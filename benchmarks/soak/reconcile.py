"""The reconciler: what every consumer wrote, against what was acknowledged.

It reads only what the consumers themselves wrote (each node's journal file,
each listener's output, each SSE client's record, each returner's store, the
reaction's side-effect file) and the firing clients' records of their acks;
never saltbus's statistics or positions. Exactly once where the README
promises it (journal, federation import, SSE resume, rawfile_json, pgjsonb,
redis_stream, mysql), at least once, duplicates counted, where it promises that
(a listener killed with -9, the reactor after a crash, the http returner's
NDJSON); per-origin order everywhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.soak.faults import Fault
from benchmarks.soak.topology import (
    HTTP_SINK_NODE,
    MYSQL_NODE,
    REACT_TAG,
    REDIS_STREAM,
    Topology,
)
from saltbus.cluster import ORIGIN_KEY
from saltbus.wire import unpack_body

CONTEXT = 15.0  # seconds around an event in which a fault is "around it"
REDIS_PAGE = 10_000  # entries read at a time (an hour's stream is ~700,000)
SHOWN = 10  # violations printed per check


@dataclass(frozen=True)
class Acked:
    id: str
    node: str
    n: int
    seq: int
    time: float
    tag: str


@dataclass
class Check:
    """One consumer checked: how many it should have, how many it missed,
    duplicates, and the violations (missing, duplicated where exactly once is
    promised, out of order)."""

    name: str
    promise: str  # "exactly once" or "at least once"
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0
    violations: list[tuple[str, str]] = field(default_factory=list)  # (event id, what)

    def violate(self, event_id: str, what: str) -> None:
        self.violations.append((event_id, what))


def read_acked(paths: Iterable[Path]) -> dict[str, Acked]:
    acked: dict[str, Acked] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "A":
                _, event_id, seq, when, tag = parts
                node, n = event_id.rsplit("-", 1)
                acked[event_id] = Acked(event_id, node, int(n), int(seq), float(when), tag)
    return acked


def compare(
    check: Check,
    expected: Iterable[Acked],
    got: list[str],
    *,
    exactly_once: bool,
    ordered: bool = True,
) -> Check:
    """``got``: the event ids as the consumer wrote them, in its order."""
    counts = Counter(got)
    wanted = sorted(expected, key=lambda a: (a.node, a.n))
    check.expected = len(wanted)
    for acked in wanted:
        seen = counts.get(acked.id, 0)
        if seen == 0:
            check.missing.append(acked.id)
            check.violate(acked.id, "missing")
        elif seen > 1:
            check.duplicates += seen - 1
            if exactly_once:
                check.violate(acked.id, f"{seen} times (exactly once promised)")
    if ordered:
        _order(check, got)
    return check


def _order(check: Check, got: list[str]) -> None:
    """Per origin, the first time each event is seen, in firing order."""
    last: dict[str, int] = {}
    seen: set[str] = set()
    for event_id in got:
        if event_id in seen or "-" not in event_id:
            continue
        seen.add(event_id)
        node, _, n = event_id.rpartition("-")
        if not n.isdigit():
            continue
        if int(n) < last.get(node, 0):
            check.violate(event_id, f"out of order (after {node}-{last[node]})")
        last[node] = max(last.get(node, 0), int(n))


def journal_rows(path: Path) -> list[tuple[int, str, dict[str, object]]]:
    """The soak's events in a journal file, in seq order, read with SQLite
    itself (its schema: ``events(seq, time, tag, body)``), not with saltbus's
    journal reader; the body decoded by the wire codec."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        cursor = db.execute(
            "SELECT seq, tag, body FROM events WHERE tag >= 'soak/' AND tag < 'soak0' ORDER BY seq"
        )
        rows = []
        for seq, tag, body in cursor:
            _tag, data = unpack_body(body)
            if isinstance(data, dict):
                rows.append((int(seq), str(tag), data))
        return rows
    finally:
        db.close()


def lines_of(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def json_ids(path: Path) -> list[str]:
    """The event ids in a file of JSON objects a line (a line cut by a kill is skipped)."""
    ids = []
    for line in lines_of(path):
        try:
            data = json.loads(line).get("data")
        except ValueError:
            continue
        if isinstance(data, dict) and "id" in data:
            ids.append(str(data["id"]))
    return ids


def reconcile(
    topology: Topology, acked: Mapping[str, Acked], sse: Mapping[str, tuple[Path, str]]
) -> list[Check]:
    """Every check; ``sse``: client name -> (its record, its tag filter)."""
    checks: list[Check] = []
    everything = list(acked.values())
    federated = topology.federated
    for node in topology.nodes:
        local = [a for a in everything if a.node == node.name]
        on_bus = everything if federated else local
        if federated:
            rows = journal_rows(node.journal)
            mine = [r for r in rows if ORIGIN_KEY not in r[2]]
            journal = compare(
                Check(f"journal {node.name}", "exactly once"),
                local,
                [str(r[2].get("id")) for r in mine],
                exactly_once=True,
            )
            seqs = {str(r[2].get("id")): r[0] for r in mine}
            for a in local:
                if a.id in seqs and seqs[a.id] != a.seq:
                    journal.violate(a.id, f"journaled as seq {seqs[a.id]}, acked as {a.seq}")
            checks.append(journal)
            imported = [r for r in rows if ORIGIN_KEY in r[2]]
            others = [a for a in everything if a.node != node.name]
            checks.append(
                compare(
                    Check(f"imported into {node.name}", "exactly once"),
                    others,
                    [str(r[2].get("id")) for r in imported],
                    exactly_once=True,
                )
            )
            checks.append(
                compare(
                    Check(f"rawfile_json {node.name}", "exactly once"),
                    everything,
                    json_ids(node.rawfile),
                    exactly_once=True,
                )
            )
            checks.append(
                compare(
                    Check(f"redis_stream {node.name}", "exactly once"),
                    everything,
                    redis_ids(topology, node.name),
                    exactly_once=True,
                )
            )
            checks.append(
                compare(
                    Check(f"pgjsonb {node.name}", "exactly once"),
                    everything,
                    pg_ids(topology, node.name),
                    exactly_once=True,
                )
            )
            if node.name == MYSQL_NODE:
                checks.append(
                    compare(
                        Check(f"mysql {node.name}", "exactly once"),
                        everything,
                        mysql_ids(topology, node.name),
                        exactly_once=True,
                    )
                )
            if node.name == HTTP_SINK_NODE:
                checks.append(
                    compare(
                        Check(f"http ndjson {node.name}", "at least once"),
                        everything,
                        lines_of(topology.sink_received),
                        exactly_once=False,
                    )
                )
        checks.append(
            compare(
                Check(f"listener {node.name} (--resume)", "at least once"),
                on_bus,
                json_ids(node.listened),
                exactly_once=False,
            )
        )
        reacted = lines_of(node.reactions)
        reactor = compare(
            Check(f"reactor {node.name}", "at least once"),
            [a for a in local if a.tag.startswith(REACT_TAG)],
            reacted,
            exactly_once=False,
            ordered=False,  # reactions run on a pool of workers: no order is promised
        )
        for event_id in set(reacted) - {a.id for a in local}:
            if event_id.rpartition("-")[0] != node.name:
                reactor.violate(event_id, "reacted to on another node (reactor_scope local)")
        checks.append(reactor)
    for name, (path, tag) in sse.items():
        first = topology.nodes[0].name
        pool = everything if federated else [a for a in everything if a.node == first]
        checks.append(
            compare(
                Check(f"SSE {name} (Last-Event-ID)", "exactly once"),
                [a for a in pool if a.tag.startswith(tag)],
                [line.split()[1] for line in lines_of(path) if len(line.split()) == 2],
                exactly_once=True,
            )
        )
    return checks


def salt_checks(
    topology: Topology, acked: Mapping[str, Acked], faults: Iterable[Fault]
) -> list[Check]:
    """Salt 3007's clients, as the README promises for them: Salt has no resume,
    so its listener may miss what its publisher had when killed, and what
    Salt's fire_event wrote as the publisher was killed; never twice, in order.
    A gap is allowed per kill -9 of that publisher, none elsewhere."""
    if topology.salt_listener is None or topology.salt_firer is None:
        return []
    faults = list(faults)
    checks = []
    listen_on = topology.nodes[0]
    kills = sum(1 for f in faults if f.kind == "serve-kill" and f.target == listen_on.name)
    got = json_ids(topology.salt_listened)
    listener = compare(
        Check(f"Salt 3007 listener {listen_on.name}", "at most once"),
        acked.values(),
        got,
        exactly_once=True,
    )
    # Missing is no violation by itself: the gaps are counted in the bus's order.
    listener.violations = [v for v in listener.violations if v[1] != "missing"]
    missing = set(listener.missing)
    order = [str(r[2].get("id")) for r in journal_rows(listen_on.journal)]
    gaps, inside = 0, False
    for event_id in order:
        if event_id in missing and not inside:
            gaps += 1
        inside = event_id in missing if event_id in acked else inside
    if gaps > kills:
        listener.violate(
            listener.missing[0], f"{gaps} gaps, more than its publisher's {kills} kill(s)"
        )
    checks.append(listener)
    fire_on = topology.nodes[1]
    windows = [
        (f.start - 1.0, f.end + 5.0)
        for f in faults
        if f.kind == "serve-kill" and f.target == fire_on.name
    ]
    fired = []
    for line in lines_of(topology.salt_fired):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "T":
            fired.append((parts[1], float(parts[2])))
    counts = Counter(str(r[2].get("id")) for r in journal_rows(fire_on.journal))
    firer = Check(f"Salt 3007 firer {fire_on.name}", "at most once")
    firer.expected = len(fired)
    for event_id, when in fired:
        seen = counts.get(event_id, 0)
        if seen > 1:
            firer.duplicates += seen - 1
            firer.violate(event_id, f"{seen} times in the journal")
        elif seen == 0:
            firer.missing.append(event_id)
            if not any(start <= when <= end for start, end in windows):
                firer.violate(event_id, "fire_event said True; not journaled, no kill near")
    checks.append(firer)
    return checks


def redis_ids(topology: Topology, master_id: str) -> list[str]:
    if topology.redis is None:
        return []
    import redis  # noqa: PLC0415 - the sinks extra, needed only here

    client = redis.Redis(port=topology.redis.port, socket_timeout=10)
    try:
        stream = REDIS_STREAM.format(master_id=master_id)
        ids: list[str] = []
        start: bytes | str = "-"
        while page := client.xrange(stream, min=start, count=REDIS_PAGE) or []:
            for entry, fields in page:
                raw = (fields or {}).get(b"data")
                data = json.loads(raw) if raw is not None else None
                if isinstance(data, dict) and "id" in data:
                    ids.append(str(data["id"]))
                start = b"(" + entry if isinstance(entry, bytes) else f"({entry}"
        return ids
    except redis.RedisError as exc:
        return [f"!{type(exc).__name__}"]
    finally:
        client.close()


def pg_ids(topology: Topology, master_id: str) -> list[str]:
    if topology.pg is None:
        return []
    try:
        with topology.pg.connect() as conn:
            rows = conn.execute(
                "SELECT data->>'id' FROM salt_events WHERE master_id = %s ORDER BY seq",
                (master_id,),
            ).fetchall()
    except Exception as exc:  # the table not there yet, the server down: all missing
        return [f"!{type(exc).__name__}"]
    return [str(r[0]) for r in rows]


def mysql_ids(topology: Topology, master_id: str) -> list[str]:
    if topology.mariadb is None:
        return []
    try:
        conn = topology.mariadb.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT JSON_UNQUOTE(JSON_EXTRACT(data, '$.id')) FROM salt_events "
                    "WHERE master_id = %s ORDER BY seq",
                    (master_id,),
                )
                rows = cur.fetchall()
        finally:
            conn.close()
    except Exception as exc:  # the table not there yet, the server down: all missing
        return [f"!{type(exc).__name__}"]
    return [str(r[0]) for r in rows]


def missing_total(checks: Iterable[Check]) -> int:
    return sum(len(c.missing) for c in checks)


def around(acked: Acked | None, faults: Iterable[Fault]) -> list[Fault]:
    if acked is None:
        return []
    return [f for f in faults if f.start - CONTEXT <= acked.time <= f.end + CONTEXT]
