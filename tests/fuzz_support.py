"""What the hostile-input suites share (tests/test_fuzz_codec.py, test_fuzz_daemon.py,
test_flood.py): the example budget, Hypothesis strategies for hostile bytes, and a
`saltbus serve` process measured from /proc with a well-behaved pair of clients.

``SALTBUS_FUZZ_EXAMPLES`` is the number of generated inputs each fuzz module
runs (tests/test_fuzz_codec.py splits it between its properties;
tests/test_fuzz_daemon.py sends that many hostile inputs to a live daemon).
The default keeps CI short; the full run is::

    SALTBUS_FUZZ_EXAMPLES=100000 ./dev test tests/test_fuzz_codec.py tests/test_fuzz_daemon.py
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import strategies as st

from saltbus import Config, Listener, Sender
from saltbus.control import CONTROL_KEY
from saltbus.wire import Framing, encode_frame, pack_body
from tests.serve_support import ServeProcess
from tests.waiting import wait_until

DEFAULT_EXAMPLES = 2000
EXAMPLES = max(1, int(os.environ.get("SALTBUS_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES))))

# Headers of msgpack types whose size a peer declares before sending it.
_SIZED = {
    "bin8": (b"\xc4", ">B"),
    "bin16": (b"\xc5", ">H"),
    "bin32": (b"\xc6", ">I"),
    "str8": (b"\xd9", ">B"),
    "str16": (b"\xda", ">H"),
    "str32": (b"\xdb", ">I"),
    "ext8": (b"\xc7", ">B"),
    "ext16": (b"\xc8", ">H"),
    "ext32": (b"\xc9", ">I"),
    "array16": (b"\xdc", ">H"),
    "array32": (b"\xdd", ">I"),
    "map16": (b"\xde", ">H"),
    "map32": (b"\xdf", ">I"),
}
# Bytes that mean most to a msgpack parser: the unused 0xc1, sized headers, nil, maps.
INTERESTING_BYTES = (0x00, 0x0A, 0x80, 0x8F, 0x90, 0xA0, 0xC0, 0xC1, 0xC4, 0xC6, 0xC9, 0xD9)
INTERESTING_BYTES += (0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF)
INVALID_UTF8 = (
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
)
CONTROL_OPS = ("subscribe", "subscribed", "lagged", "acked", "stats", "auth", "welcome")
CONTROL_OPS += ("refused", "stats-reply", "ack", "nonsense")
CONTROL_FIELDS = ("patterns", "since", "epoch", "seq", "replaying", "first", "delivered", "id")
CONTROL_FIELDS += ("secret", "reason", "stats")
MATCH_TYPES = ("startswith", "endswith", "find", "regex", "fnmatch", "glob", "")


def sized_header(kind: str, size: int) -> bytes:
    """A msgpack header declaring ``size`` (clamped to what the header can hold)."""
    marker, fmt = _SIZED[kind]
    size = min(size, 2 ** (8 * struct.calcsize(fmt)) - 1)
    header = marker + struct.pack(fmt, size)
    return header + b"\x01" if kind.startswith("ext") else header  # an ext's type byte


def nested(depth: int, kind: str, leaf: bytes = b"\xc0") -> bytes:
    """A msgpack value nested ``depth`` containers deep, written by hand (msgpack's
    packer refuses to nest this deep)."""
    if kind == "array":
        return b"\x91" * depth + leaf
    if kind == "map":
        return b"\x81\xa1k" * depth + leaf
    # {"a": [{"a": [...], "b": None}], "b": None}: maps and arrays in turn
    return b"\x82\xa1a\x91" * (depth // 2) + leaf + b"\xa1b\xc0" * (depth // 2)


def frame_around(head: bytes, body: bytes) -> bytes:
    """A frame's map with raw (possibly invalid) msgpack as its head, and ``body`` as bin."""
    return b"\x82\xa4head" + head + b"\xa4body" + msgpack.packb(body, use_bin_type=True)


def with_framing(frame: bytes, framing: Framing | None) -> bytes:
    if framing is Framing.LENGTH_PREFIXED:
        return struct.pack(">I", len(frame)) + frame
    return frame


# -- strategies -------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
tags = st.text(min_size=1, max_size=40).filter(lambda t: "\n\n" not in t and not t.endswith("\n"))
data_dicts = st.dictionaries(st.text(max_size=8), values, max_size=5)


ints64 = st.integers(-(2**63), 2**64 - 1)
# Filters shaped right, with any pattern (regexes that do not compile, too) and
# any match type, or shaped wrong.
_pattern = st.text(max_size=6) | st.sampled_from(
    ["(", "[a-", "a{99999999999}", "*?", "\\", "(" * 600 + ")" * 600, "(?P=missing)"]
)
filters = st.one_of(
    st.lists(st.tuples(_pattern, st.sampled_from(MATCH_TYPES[:5])).map(list), max_size=3),
    st.lists(st.tuples(_pattern, st.sampled_from(MATCH_TYPES)).map(list), max_size=3),
    st.lists(st.lists(_pattern | st.sampled_from(MATCH_TYPES), max_size=3), max_size=3),
    values,
)
# Each control field with its right type (most of the time), or any value.
_FIELD_VALUES = {
    "patterns": filters,
    "since": st.none() | ints64,
    "epoch": st.none() | ints64,
    "seq": ints64,
    "replaying": st.booleans(),
    "first": st.none() | ints64,
    "delivered": ints64,
    "id": ints64,
    "secret": st.text(max_size=70),
    "reason": st.text(max_size=20),
    "stats": st.dictionaries(st.text(max_size=6), values, max_size=3),
}


_OP_FIELDS = {
    "subscribe": ("patterns", "since", "epoch"),
    "subscribed": ("seq", "epoch", "replaying", "first"),
    "lagged": ("delivered",),
    "acked": ("id", "seq"),
    "auth": ("secret",),
    "refused": ("reason",),
    "stats-reply": ("stats",),
    "ack": ("id",),
}


@st.composite
def control_heads(draw: st.DrawFn) -> dict[str, Any]:
    """Heads that look like saltbus control messages: known ops with their
    fields, of the right type most of the time; other fields; unknown ops."""
    op = draw(st.sampled_from(CONTROL_OPS) if draw(st.integers(0, 4)) else values)
    names = (
        [n for n in _OP_FIELDS.get(op, ()) if draw(st.integers(0, 3))]
        if isinstance(op, str)
        else []
    )
    names += draw(st.lists(st.sampled_from(CONTROL_FIELDS), max_size=2))
    control: dict[str, Any] = {"op": op}
    for name in names:
        control[name] = draw(_FIELD_VALUES[name] if draw(st.integers(0, 4)) else values)
    return {CONTROL_KEY: control}


@st.composite
def subscriber_requests(draw: st.DrawFn, framing: Framing) -> bytes:
    """What a saltbus listener writes to the publish socket (a filter, where to
    resume, a stats request), with hostile fields, and perhaps junk after it."""
    op = draw(st.sampled_from(["subscribe", "subscribe", "subscribe", "stats", "auth"]))
    control: dict[str, Any] = {"op": op}
    for name in _OP_FIELDS.get(op, ()):
        if draw(st.integers(0, 5)):
            control[name] = draw(_FIELD_VALUES[name] if draw(st.integers(0, 5)) else values)
    frame = encode_frame(b"", {CONTROL_KEY: control}, framing)
    return frame + draw(st.just(b"") | st.binary(max_size=40))


heads = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"seq": st.integers(0, 2**63)}),
    control_heads(),
    st.dictionaries(st.text(max_size=8), values, max_size=3),
)


@st.composite
def valid_frames(draw: st.DrawFn, framing: Framing) -> bytes:
    """One well-formed frame: an event, or a control frame (empty body)."""
    head = draw(heads)
    body = b"" if draw(st.integers(0, 4)) == 0 else pack_body(draw(tags), draw(data_dicts))
    return encode_frame(body, head, framing)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> tuple[bytes, int]:
    """``data`` after a few bit flips, insertions, deletions, overwrites and
    truncations, and how many of its first bytes were left untouched."""
    buf = bytearray(data)
    intact = len(buf)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "byte", "truncate", "repeat"]))
        pos = draw(st.integers(0, len(buf)))
        intact = min(intact, pos)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "byte" and pos < len(buf):
            buf[pos] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == "truncate":
            del buf[pos:]
        elif op == "repeat":
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 16))]
    return bytes(buf), intact


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A frame with the wrong msgpack type somewhere: not a map, a head that is
    not a map, a body that is not bin, missing or extra keys, non-str keys."""
    not_a_map = scalars | st.lists(values, max_size=3)
    not_bin = (
        st.none()
        | st.text(max_size=8)
        | st.integers(-(2**63), 2**64 - 1)
        | st.booleans()
        | st.lists(values, max_size=2)
    )
    kind = draw(st.integers(0, 5))
    value: Any
    if kind == 0:
        value = draw(not_a_map)
    elif kind == 1:
        value = {"head": draw(not_a_map), "body": draw(st.binary(max_size=20))}
    elif kind == 2:
        value = {"head": draw(heads), "body": draw(not_bin)}
    elif kind == 3:
        value = {"head": draw(heads)}
    elif kind == 4:
        value = {"head": draw(heads), "body": draw(st.binary(max_size=20))}
        value.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=3)))
    else:
        value = {
            draw(st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4)): draw(values),
            "body": b"t\n\n\x80",
        }
    return msgpack.packb(value, use_bin_type=draw(st.booleans()))


@st.composite
def huge_declarations(draw: st.DrawFn) -> bytes:
    """A frame with a msgpack header that declares a huge size somewhere in it, followed
    by a little of what it declared (or by nothing)."""
    kind = draw(st.sampled_from(sorted(_SIZED)))
    size = draw(st.integers(2**15, 2**32 - 1) | st.sampled_from([2**32 - 1, 2**31, 2**30]))
    header = sized_header(kind, size) * draw(st.integers(1, 8))
    tail = draw(st.binary(max_size=64))
    where = draw(st.sampled_from(["top", "head", "body-bin", "head-value", "nested"]))
    if where == "top":
        return header + tail
    if where == "head":
        return b"\x82\xa4head" + header + tail
    if where == "body-bin":
        return b"\x82\xa4head\x80\xa4body" + sized_header(kind, size) + tail
    if where == "head-value":
        return b"\x82\xa4head\x81\xa1k" + header + tail
    return b"\x82\xa4head" + b"\x91" * draw(st.integers(1, 300)) + header + tail


@st.composite
def deep_frames(draw: st.DrawFn) -> bytes:
    """A frame whose head, control message or body data nests thousands deep."""
    # msgpack refuses to nest deeper than 1024; Python's recursion limit is 1000.
    depth = draw(st.integers(1, 5000) | st.integers(900, 1030) | st.sampled_from([1024, 1025]))
    kind = draw(st.sampled_from(["array", "map", "mixed"]))
    where = draw(st.sampled_from(["head", "control", "data", "body-tag"]))
    deep = nested(depth, kind)
    if where == "head":
        return frame_around(deep, b"t\n\n\x80")
    if where == "control":
        field = draw(st.sampled_from(CONTROL_FIELDS))
        op = draw(st.sampled_from(CONTROL_OPS)).encode()
        control = b"\x82\xa2op" + msgpack.packb(op.decode()) + msgpack.packb(field) + deep
        return frame_around(b"\x81\xa7saltbus" + control, b"")
    if where == "data":
        return frame_around(b"\x80", b"deep/data\n\n" + deep)
    return frame_around(b"\x80", deep + b"\n\n\x80")


@st.composite
def invalid_utf8_frames(draw: st.DrawFn) -> bytes:
    """A frame whose tag, or a str in its head, is not UTF-8."""
    text = st.text(
        st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=8
    )
    bad = draw(text).encode() + draw(st.sampled_from(INVALID_UTF8)) + draw(text).encode()
    where = draw(st.sampled_from(["tag", "head-key", "head-value", "body-key"]))
    if where == "tag":
        return encode_frame(bad + b"\n\n" + msgpack.packb(draw(data_dicts), use_bin_type=True))
    raw_str = b"\xd9" + bytes([len(bad)]) + bad
    if where == "head-key":
        return frame_around(b"\x81" + raw_str + b"\x01", b"t\n\n\x80")
    if where == "head-value":
        return frame_around(b"\x81\xa3seq" + raw_str, b"t\n\n\x80")
    return frame_around(b"\x80", b"t\n\n\x81" + raw_str + b"\x01")


@st.composite
def stalled_partial_frames(draw: st.DrawFn) -> bytes:
    """The start of a frame that never ends, built to make a parser allocate:
    containers declaring huge counts, nested to the parser's limit, or many
    small containers (each a Python object far larger than its one byte)."""
    parts = [b"\x82\xa4head"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["declared", "fill", "nested"]))
        if kind == "declared":
            container = draw(st.sampled_from(["array16", "array32", "map16", "map32"]))
            size = draw(st.integers(1000, 2**32 - 1) | st.sampled_from([65535, 100_000, 2**32 - 1]))
            parts.append(sized_header(container, size) * draw(st.integers(1, 1000)))
        elif kind == "fill":
            item = draw(st.sampled_from([b"\x90", b"\x80", b"\xc0"]))
            parts.append(sized_header("array32", 2**32 - 1) + item * draw(st.integers(1, 30000)))
        else:
            depth = draw(st.integers(1, 1000))
            parts.append(nested(depth, draw(st.sampled_from(["array", "map"])), b""))
    return b"".join(parts)


@st.composite
def hostile_inputs(draw: st.DrawFn, framing: Framing) -> bytes:
    """Any of the kinds of hostile input, framed for ``framing`` (or not at all)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        frames = draw(st.lists(valid_frames(framing), min_size=1, max_size=3))
        return draw(mutated(b"".join(frames)))[0]
    maker: Callable[[], bytes] = {
        2: lambda: draw(wrong_types()),
        3: lambda: draw(huge_declarations()),
        4: lambda: draw(deep_frames()),
        5: lambda: draw(invalid_utf8_frames()),
        6: lambda: draw(valid_frames(Framing.BARE)),
        7: lambda: encode_frame(b"", draw(control_heads())),
        8: lambda: encode_frame(b"", draw(control_heads())),
        9: lambda: draw(stalled_partial_frames()),
    }[kind]
    frame = maker()
    if draw(st.integers(0, 3)) == 0:
        frame = frame[: draw(st.integers(0, len(frame)))]  # truncated
    if framing is Framing.LENGTH_PREFIXED and draw(st.integers(0, 7)):
        return with_framing(frame, framing)
    return frame


# -- a live daemon, measured from /proc ------------------------------------------------

START_WAIT = 30.0
PROC_STEP = 0.05  # seconds between two looks at /proc
# What the daemon's log must never show: an exception that escaped a protocol
# callback or a task (asyncio logs those and carries on), or a crash.
# asyncio.to_thread's default pool: the most journal readers at once.
JOURNAL_READERS = min(32, (os.cpu_count() or 1) + 4)
LOG_ALARMS = ("Traceback", "Fatal error", "Exception in callback", "exception was never retrieved")


class Daemon(ServeProcess):
    """A `saltbus serve` process, its bus's settings, and its log, read for alarms."""

    def fds_settled(self, baseline_fds: int, baseline_sockets: int) -> bool:
        """Every connection's descriptor is closed again. The journal's read
        handles may stay: SQLite keeps a closed connection's descriptor open for
        reuse while another connection holds a lock on the file (POSIX locks are
        per process), at most one per thread that replays (asyncio.to_thread)."""
        return self.sockets() <= baseline_sockets and self.fds() <= baseline_fds + JOURNAL_READERS

    def wait_settled(self, baseline_fds: int, baseline_sockets: int, timeout: float) -> None:
        """Until :meth:`fds_settled`; a timeout names the descriptors left open."""
        wait_until(
            lambda: self.fds_settled(baseline_fds, baseline_sockets),
            lambda: (
                f"descriptors to come back to {baseline_fds} ({baseline_sockets} sockets); "
                f"{self.fds()} ({self.sockets()} sockets) open: {self.fd_targets()}"
            ),
            timeout,
            PROC_STEP,
        )

    def alarms(self) -> list[str]:
        """The log's lines that tell of an escaped exception."""
        return [line for line in self.log.splitlines() if any(a in line for a in LOG_ALARMS)]

    def assert_clean_log(self) -> None:
        alarms = self.alarms()
        assert not alarms, "\n".join(alarms[:20]) + "\n---\n" + self.log[-5000:]


@contextlib.contextmanager
def serve(config: Config, **settings: Any) -> Iterator[Daemon]:
    """`saltbus serve` for ``config`` with ``settings`` (Config fields, passed as
    SALTBUS_* variables), its log in a file beside the sockets' directory (a
    pipe nobody reads would stall a daemon that logs every bad connection)."""
    config = config.replace(**settings)
    env = {f"SALTBUS_{name.upper()}": str(value) for name, value in settings.items()}
    log = config.sock_dir.parent / "serve.log"
    with Daemon.for_bus(config, log=log, env=env) as daemon:
        yield daemon


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print a suite's numbers in pytest's output, past output capturing (they
    are what the full run is for, and it passes)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


class WellBehavedPair:
    """A Sender firing numbered events and a Listener checking that every one
    arrives, in order, while hostile clients do their worst; each in a thread."""

    TAG = "wellbehaved/pair/"

    def __init__(self, config: Config, interval: float = 0.002) -> None:
        self.config = config
        self.interval = interval
        self.fired = 0
        self.received: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        # No reconnection: a dropped connection is a failure here, not something to hide.
        self.listener = Listener(config, self.TAG, reconnect=False, resume=False)
        self.listener.connect(timeout=START_WAIT)
        self._threads = [
            threading.Thread(target=self._fire, name="well-behaved-sender", daemon=True),
            threading.Thread(target=self._listen, name="well-behaved-listener", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _fire(self) -> None:
        try:
            with Sender(self.config) as sender:
                while not self._stop.is_set():
                    sender.fire(f"{self.TAG}{self.fired}", {"n": self.fired}, timeout=10)
                    self.fired += 1
                    self._stop.wait(self.interval)
        except BaseException as exc:
            self.errors.append(exc)

    def _listen(self) -> None:
        try:
            while not self._stop.is_set() or len(self.received) < self.fired:
                event = self.listener.receive(timeout=0.5)
                if event is None:
                    if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                        return
                    continue
                expected = len(self.received)
                if event.tag != f"{self.TAG}{expected}" or event.data.get("n") != expected:
                    raise AssertionError(f"expected event {expected}, got {event.tag} {event.data}")
                self.received.append(expected)
        except BaseException as exc:
            self.errors.append(exc)

    _drain_deadline = float("inf")

    def check(self) -> None:
        """Fail now if either side failed so far."""
        assert not self.errors, repr(self.errors)

    def stop(self, drain: float = 30.0) -> None:
        """Stop firing, let the listener receive what was fired, and check it all came."""
        self._drain_deadline = time.monotonic() + drain
        self._stop.set()
        for thread in self._threads:
            thread.join(drain + 5)
        self.listener.close()
        self.check()
        assert self.received == list(range(self.fired)), (len(self.received), self.fired)
