"""One benchmark process: a publisher or a client of one bus, with one library.

Executed as a script, never imported by the benchmark itself: by the Salt venv's
python for ``--lib salt`` (Salt's ``MasterEvent``, and Salt's own publisher), by the
project venv's python for ``--lib saltbus`` (``saltbus.Sender`` / ``saltbus.Listener``)
and ``--lib raw`` (plain sockets and msgpack: frames encoded before the clock starts,
sent in large writes, counted without decoding their data; the relay's reference).
It imports only the standard library and the chosen library.

Roles and their protocol on stdout (one line each):

* ``publisher`` (salt only): serve Salt's IPC publisher in ``--sock-dir`` until SIGTERM.
* ``fire``: connect, print ``READY``, fire ``bench/sync`` every 20 ms until stdin
  says ``GO``, then fire ``--count`` events ``bench/evt/<n>`` (at ``--rate`` a second,
  or as fast as possible) and print one JSON result.
* ``listen``: wait for one ``bench/sync`` (proof of a live subscription), print
  ``READY``, count ``bench/evt/*`` until ``--count`` arrived or nothing came for
  ``--idle`` seconds, print one JSON result.
* ``stuck``: a plain socket on the publish socket that reads until the first bytes
  arrive (a sync frame), prints ``READY`` and then never reads again.

Every wait is bounded (``--deadline``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

PUB = "master_event_pub.ipc"
PULL = "master_event_pull.ipc"
SYNC_TAG = "bench/sync"
EVT_PREFIX = "bench/evt/"
SYNC_INTERVAL = 0.02
SIZES = {"small": 200, "1k": 1024}
# msgpack's "sent" key (a fixstr) and float64 marker, and the float's bytes.
_SENT_KEY = b"\xa4sent\xcb"
_SENT = struct.Struct(">d")


def make_data(n: int, sent: float, size: str) -> dict[str, Any]:
    """The event data: about 200 bytes of msgpack (``small``) or 1 KB (``1k``),
    shaped like a job return."""
    return {
        "n": n,
        "sent": sent,
        "id": "bench-minion-0001",
        "fun": "state.apply",
        "jid": "20261127041530123456",
        "retcode": 0,
        "success": True,
        "fun_args": ["webserver", {"test": True}],
        "pad": "x" * (SIZES[size] - 128),
    }


def emit(value: object) -> None:
    print(value if isinstance(value, str) else json.dumps(value), flush=True)


# -- libraries -----------------------------------------------------------------


class SaltLib:
    def __init__(self, sock_dir: str) -> None:
        # salt._logging first: Salt tweaks logging on import.
        import salt._logging  # type: ignore[import-not-found]  # noqa: PLC0415
        import salt.config  # type: ignore[import-not-found]  # noqa: PLC0415
        import salt.utils.event  # type: ignore[import-not-found]  # noqa: PLC0415

        opts = salt.config.DEFAULT_MASTER_OPTS.copy()
        opts.update(sock_dir=sock_dir, ipc_mode="ipc", id="saltbus-bench_master")
        log_opts = dict(opts, log_level="warning")
        log_opts.update(configure_file_logger=False, configure_ext_handlers=False)
        salt._logging.set_logging_options_dict(log_opts)
        salt._logging.setup_logging()
        self.opts = opts
        self.sock_dir = sock_dir
        self._event_mod = salt.utils.event
        self._fire: Any = None
        self._listen: Any = None

    def fire(self, tag: str, data: dict[str, Any]) -> bool:
        if self._fire is None:
            self._fire = self._event_mod.MasterEvent(self.sock_dir, opts=self.opts, listen=False)
        return bool(self._fire.fire_event(data, tag))

    def subscribe(self) -> None:
        if self._listen is not None:
            self._listen.destroy()
        self._listen = self._event_mod.MasterEvent(self.sock_dir, opts=self.opts, listen=True)

    def receive(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        # One get_event per event with a long wait: a get_event that times out makes
        # Salt drop and reopen its subscription (WIRE.md), so it happens only at the end.
        ret = self._listen.get_event(wait=timeout, tag="bench/", full=True)
        return None if ret is None else (ret["tag"], ret["data"])


class SaltbusLib:
    def __init__(self, sock_dir: str) -> None:
        import saltbus  # noqa: PLC0415

        self._saltbus = saltbus
        self.config = saltbus.Config.load(env={}, overrides={"sock_dir": sock_dir})
        self._sender: Any = None
        self._listener: Any = None

    def fire(self, tag: str, data: dict[str, Any]) -> bool:
        if self._sender is None:
            self._sender = self._saltbus.Sender(self.config)
        self._sender.fire(tag, data)
        return True

    def subscribe(self) -> None:
        self._listener = self._saltbus.Listener(self.config, tag="bench/")
        self._listener.connect(timeout=10.0)

    def receive(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        event = self._listener.receive(timeout)
        return None if event is None else (event.tag, event.data)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000001", time.gmtime())


class RawLib:
    """The machine's reference: frames encoded up front, moved in large writes."""

    CHUNK = 256 * 1024

    def __init__(self, sock_dir: str) -> None:
        import msgpack  # noqa: PLC0415

        self._msgpack = msgpack
        self.sock_dir = sock_dir
        self._sock: socket.socket | None = None
        self._sub: socket.socket | None = None
        self._unpacker: Any = None
        self._timeout = -1.0
        self._ready: list[tuple[str, dict[str, Any]]] = []
        self.decode = False  # the latency listener needs each event's `sent`

    def frame(self, tag: str, data: dict[str, Any]) -> bytes:
        data = dict(data, _stamp=_stamp())
        body = tag.encode() + b"\n\n" + self._msgpack.packb(data, use_bin_type=True)
        return self._msgpack.packb({"head": {}, "body": body}, use_bin_type=True)  # type: ignore[no-any-return]

    def timed_frame(self, tag: str, data: dict[str, Any]) -> tuple[bytearray, int]:
        """``frame(tag, data)`` as a bytearray, and where its ``sent`` value's
        8 bytes are (big-endian float64, after msgpack's 0xcb marker)."""
        frame = bytearray(self.frame(tag, data))
        return frame, frame.index(_SENT_KEY) + len(_SENT_KEY)

    def send_frame(self, frame: bytearray) -> None:
        if self._sock is None:
            self._sock = self._connect(PULL)
        self._sock.sendall(frame)

    def _connect(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.path.join(self.sock_dir, name))
        return sock

    def send(self, blob: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect(PULL)
        view = memoryview(blob)
        for start in range(0, len(view), self.CHUNK):
            self._sock.sendall(view[start : start + self.CHUNK])

    def fire(self, tag: str, data: dict[str, Any]) -> bool:
        self.send(self.frame(tag, data))
        return True

    def subscribe(self) -> None:
        self._sub = self._connect(PUB)
        self._timeout = -1.0
        self._unpacker = self._msgpack.Unpacker(raw=False)

    def receive(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The tag, and an empty data dict: with ``decode``, ``{"sent": ...}``
        for a timed event, its `sent` read where it is, not the whole data."""
        assert self._sub is not None
        while True:
            for frame in self._unpacker:
                body = frame["body"]
                cut = body.index(b"\n\n")
                data: dict[str, Any] = {}
                at = body.find(_SENT_KEY, cut) if self.decode else -1
                if at >= 0:  # the `sent` of a timed event, read where it is
                    data["sent"] = _SENT.unpack_from(body, at + len(_SENT_KEY))[0]
                return body[:cut].decode(), data
            # One blocking recv() bounded by the kernel (SO_RCVTIMEO), not a
            # select() and a recv(): one system call per wake-up.
            if timeout != self._timeout:
                self._timeout = timeout
                seconds = int(timeout)
                self._sub.setsockopt(
                    socket.SOL_SOCKET,
                    socket.SO_RCVTIMEO,
                    struct.pack("ll", seconds, int((timeout - seconds) * 1e6)),
                )
            try:
                data = self._sub.recv(1 << 20)
            except BlockingIOError:
                return None  # nothing within the timeout
            if not data:
                return None
            self._unpacker.feed(data)


def load_lib(name: str, sock_dir: str) -> Any:
    return {"salt": SaltLib, "saltbus": SaltbusLib, "raw": RawLib}[name](sock_dir)


# -- roles -----------------------------------------------------------------------


def stdin_says_go(timeout: float) -> bool:
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(readable) and sys.stdin.readline().strip() == "GO"


def role_fire(args: argparse.Namespace) -> int:
    lib = load_lib(args.lib, args.sock_dir)
    deadline = time.monotonic() + args.deadline
    while not lib.fire(SYNC_TAG, {"sync": True}):
        if time.monotonic() > deadline:
            return 4
        time.sleep(SYNC_INTERVAL)
    emit("READY")
    while not stdin_says_go(SYNC_INTERVAL):
        if time.monotonic() > deadline:
            return 4
        lib.fire(SYNC_TAG, {"sync": True})
    count, size, failed = args.count, args.size, 0
    if args.lib == "raw" and args.rate <= 0:
        # Encoded before the clock starts: the reference moves bytes, nothing else.
        frames = [lib.frame(f"{EVT_PREFIX}{n}", make_data(n, 0.0, size)) for n in range(count)]
        t_start = time.monotonic()
        lib.send(b"".join(frames))
    elif args.rate > 0 and args.lib == "raw":
        # Encoded before the clock starts, as above; each frame's `sent` is
        # written into its encoded bytes at fire time (a msgpack float64 has a
        # fixed size), so that the clients add nothing but one send() to the
        # publisher's latency.
        frames = [
            lib.timed_frame(f"{EVT_PREFIX}{n}", make_data(n, 0.0, size)) for n in range(count)
        ]
        t_start = time.monotonic()
        for n, (frame, at) in enumerate(frames):
            due = t_start + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            _SENT.pack_into(frame, at, time.monotonic())
            lib.send_frame(frame)
    elif args.rate > 0:
        t_start = time.monotonic()
        for n in range(count):
            due = t_start + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            failed += not lib.fire(f"{EVT_PREFIX}{n}", make_data(n, time.monotonic(), size))
    else:
        t_start = time.monotonic()
        for n in range(count):
            failed += not lib.fire(f"{EVT_PREFIX}{n}", make_data(n, time.monotonic(), size))
    t_end = time.monotonic()
    emit({"sent": count - failed, "failed": failed, "t_start": t_start, "t_end": t_end})
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def role_listen(args: argparse.Namespace) -> int:
    lib = load_lib(args.lib, args.sock_dir)
    if args.latency and isinstance(lib, RawLib):
        lib.decode = True
    deadline = time.monotonic() + args.deadline
    lib.subscribe()
    while True:
        got = lib.receive(1.0)
        if got is not None and got[0] == SYNC_TAG:
            break
        if time.monotonic() > deadline:
            return 4
        if got is None and args.lib == "salt":
            lib.subscribe()  # Salt's timed-out get_event may have lost the subscription
    emit("READY")
    received = out_of_order = duplicates = 0
    last_n = -1
    seen = bytearray(args.count)
    latencies: list[float] = []
    t_first = t_last = 0.0
    while received < args.count and time.monotonic() < deadline:
        got = lib.receive(args.idle)
        if got is None:
            break
        tag, data = got
        if not tag.startswith(EVT_PREFIX):
            continue
        now = time.monotonic()
        n = int(tag[len(EVT_PREFIX) :])
        if 0 <= n < args.count and seen[n]:
            duplicates += 1
            continue
        if 0 <= n < args.count:
            seen[n] = 1
        received += 1
        if received == 1:
            t_first = now
        t_last = now
        out_of_order += n < last_n
        last_n = max(last_n, n)
        if args.latency:
            latencies.append(now - data["sent"])
    result: dict[str, Any] = {
        "received": received,
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "t_first": t_first,
        "t_last": t_last,
    }
    if latencies:
        result.update(
            p50=percentile(latencies, 0.50), p99=percentile(latencies, 0.99), max=max(latencies)
        )
    emit(result)
    return 0


def role_stuck(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.path.join(args.sock_dir, PUB))
    sock.settimeout(args.deadline)
    sock.recv(1)  # a sync frame: the publisher has this subscriber
    emit("READY")
    time.sleep(args.deadline)  # never reads again; the benchmark kills it first
    sock.close()
    return 0


def role_publisher(args: argparse.Namespace) -> int:
    lib = SaltLib(args.sock_dir)
    import salt.transport  # type: ignore[import-not-found]  # noqa: PLC0415

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = salt.transport.ipc_publish_server("master", lib.opts)
    try:
        server.publish_daemon(server.publish_payload)
    except SystemExit:
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("publisher", "fire", "listen", "stuck"))
    parser.add_argument("--lib", choices=("salt", "saltbus", "raw"), default="saltbus")
    parser.add_argument("--sock-dir", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0: flat out")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args(argv)
    role = {
        "publisher": role_publisher,
        "fire": role_fire,
        "listen": role_listen,
        "stuck": role_stuck,
    }[args.role]
    return role(args)


if __name__ == "__main__":
    sys.exit(main())
