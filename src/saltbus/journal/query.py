"""Turning a journal query (seq range, tag pattern, time bounds, limit) into SQL.

Every filter is applied inside SQLite, so ``LIMIT`` is exact and bodies of
non-matching events are never copied into Python:

* seq and time bounds are plain ``WHERE`` terms on the rowid scan;
* a ``startswith`` tag is a range on the tag index (``tag >= p AND tag < p'``,
  ``p'`` being the smallest string above every string starting with ``p``),
  which, unlike ``LIKE``, is case-sensitive and has no wildcards;
* the other four match types call :func:`saltbus.event.tag_matcher` through a
  function registered on the connection, so their semantics are exactly the
  ones live subscriptions use.

Which plan answers a ``startswith`` query is chosen per query, see :func:`plan`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from saltbus.event import MatchType, tag_matcher

COLUMNS: Final = "seq, time, tag, body"
# Named parameters of a query.
Params = dict[str, str | int | float]
MATCH_FUNCTION: Final = "saltbus_tag_match"

# A tag-index range with fewer entries than this is cheap to read and sort
# whatever the seq range; one with more is read in seq order instead (a probe
# costs at most this many index entries, well under a millisecond's work).
INDEX_PROBE_LIMIT: Final = 20_000

_MAX_CODE_POINT: Final = 0x10FFFF
_SURROGATES: Final = range(0xD800, 0xE000)


@dataclass(frozen=True, slots=True)
class Filters:
    """A journal query, already validated. ``until``/``limit`` None = unbounded."""

    since: int = 0
    until: int | None = None
    limit: int | None = None
    tag: str = ""
    match_type: MatchType = MatchType.STARTSWITH
    after_time: float | None = None
    before_time: float | None = None


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``
    (None when there is none, e.g. a prefix of U+10FFFF only).

    SQLite compares TEXT as UTF-8 bytes, which orders exactly as code points
    do, so incrementing the last code point that can be incremented is exact.
    """
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point in _SURROGATES:  # not encodable in UTF-8; the next valid one
            point = _SURROGATES.stop
        if point <= _MAX_CODE_POINT:
            return "".join(chars) + chr(point)
    return None


def _bounds(filters: Filters, params: Params) -> list[str]:
    """The seq and time terms (the ones every plan shares)."""
    # seq >= since + 1 rather than seq > since: SQLite seeks the first key it
    # wants, not the last one it does not, so a read that starts after a
    # damaged page does not touch that page.
    terms = ["seq >= :first"]
    params["first"] = filters.since + 1
    if filters.until is not None:
        terms.append("seq <= :until")
        params["until"] = filters.until
    # Half-open [after_time, before_time): consecutive windows neither
    # overlap nor leave a gap.
    if filters.after_time is not None:
        terms.append("time >= :after_time")
        params["after_time"] = filters.after_time
    if filters.before_time is not None:
        terms.append("time < :before_time")
        params["before_time"] = filters.before_time
    return terms


def _prefix_terms(prefix: str, params: Params) -> list[str]:
    params["lo"] = prefix
    upper = prefix_upper_bound(prefix)
    if upper is None:
        return ["tag >= :lo"]
    params["hi"] = upper
    return ["tag >= :lo", "tag < :hi"]


def plan(
    conn: sqlite3.Connection, filters: Filters, last_seq: Callable[[], int]
) -> tuple[str, Params]:
    """SQL and parameters answering ``filters`` with rows in seq order.

    For a ``startswith`` tag there are two ways, each fast where the other is
    slow, so the cheaper one is picked:

    * the *index* plan reads the tag-index range, keeps the seqs in the seq
      range, sorts them and looks up only the first ``limit`` rows. Its cost
      is the number of events whose tag matches, in the whole journal.
    * the *scan* plan walks the table in seq order from ``since`` and stops at
      the ``limit``-th match. Its cost is the distance to that match.

    A resume from a recent seq has a short seq range: scan. Otherwise the
    index range is counted up to :data:`INDEX_PROBE_LIMIT`; a selective prefix
    (``salt/auth``) takes the index plan, a broad one (``salt/``, most events
    match) the scan plan, which then finds matches almost at once. Reading a
    broad prefix chunk by chunk therefore costs one pass over the journal, not
    one pass over the index range per chunk.
    """
    params: Params = {"limit": -1 if filters.limit is None else filters.limit}
    terms = _bounds(filters, params)
    if not filters.tag:
        return _scan(terms), params
    if filters.match_type is not MatchType.STARTSWITH:
        _register_matcher(conn, filters.tag, filters.match_type)
        return _scan([*terms, f"{MATCH_FUNCTION}(tag)"]), params
    tag_terms = _prefix_terms(filters.tag, params)
    upper_seq = last_seq() if filters.until is None else min(filters.until, last_seq())
    if upper_seq - filters.since <= INDEX_PROBE_LIMIT or not _index_range_is_small(
        conn, tag_terms, params
    ):
        # NOT INDEXED: walk the rowid order even though a tag index exists
        # (the rowid itself is still used for the seq range).
        return _scan([*terms, *tag_terms], table="events NOT INDEXED"), params
    inner = " AND ".join([*tag_terms, *terms])
    # The subquery touches only the index (it holds tag and seq) unless a
    # time bound forces a row lookup; the outer query reads just ``limit`` rows.
    sql = (
        f"SELECT {COLUMNS} FROM events WHERE seq IN ("
        f"SELECT seq FROM events INDEXED BY events_tag WHERE {inner} "
        f"ORDER BY seq LIMIT :limit) ORDER BY seq"
    )
    return sql, params


def _scan(terms: list[str], table: str = "events") -> str:
    where = " AND ".join(terms)
    return f"SELECT {COLUMNS} FROM {table} WHERE {where} ORDER BY seq LIMIT :limit"


def _index_range_is_small(conn: sqlite3.Connection, tag_terms: list[str], params: Params) -> bool:
    where = " AND ".join(tag_terms)
    probe: Params = {key: params[key] for key in ("lo", "hi") if key in params}
    probe["probe"] = INDEX_PROBE_LIMIT
    (count,) = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_tag "
        f"WHERE {where} LIMIT :probe)",
        probe,
    ).fetchone()
    return bool(count < INDEX_PROBE_LIMIT)


def _register_matcher(conn: sqlite3.Connection, pattern: str, match_type: MatchType) -> None:
    # Built here, before the query runs, so that an invalid regex raises its
    # ConfigError to the caller rather than an opaque error from inside SQLite.
    # Registered per query (the store fetches each result fully before the
    # next query), which replaces the previous query's function.
    matches = tag_matcher(pattern, match_type)
    conn.create_function(MATCH_FUNCTION, 1, matches, deterministic=True)
