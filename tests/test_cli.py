"""The ``saltbus`` command line (saltbus.cli): serve, listen and fire as the
user runs them, as subprocesses of the venv's console script.

Every wait is bounded: a publisher is ready when it says it serves (its
sockets listening: tests/serve_support.py); a listener is ready when the
publisher's own statistics show its process subscribed. Whatever a test
starts is killed when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus.cli.main import build_parser, main
from saltbus.client.admin import fetch_stats
from saltbus.client.sender import Sender
from saltbus.config import Config
from saltbus.errors import SaltbusError
from saltbus.wire import FrameDecoder, Framing
from tests.serve_support import SALTBUS, ServeProcess, clean_env
from tests.waiting import wait_until

WAIT = 10.0  # the bound of every wait in this module
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")


# -- helpers -------------------------------------------------------------------------------


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, stdin: str | None = None
) -> Any:
    return subprocess.run(
        [os.fspath(SALTBUS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        check=False,
    )


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert "KeyboardInterrupt" not in stderr, stderr


class Bus:
    """Where one bus lives: sock_dir and data_dir under a short temporary root."""

    def __init__(self, root: Path, salt_version: str | None = None) -> None:
        self.root = root
        self.sock_dir = root / "bus"
        self.data_dir = root / "data"
        overrides: dict[str, Any] = {"sock_dir": self.sock_dir, "data_dir": self.data_dir}
        if salt_version:
            overrides["salt_version"] = salt_version
        self.config = Config.load(env={}, overrides=overrides)
        self.pub = Path(self.config.pub_address)  # type: ignore[arg-type]
        self.pull = Path(self.config.pull_address)  # type: ignore[arg-type]

    @property
    def flags(self) -> list[str]:
        return ["--sock-dir", os.fspath(self.sock_dir)]

    def listening(self) -> bool:
        if not all(p.exists() and stat.S_ISSOCK(p.stat().st_mode) for p in (self.pub, self.pull)):
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(self.pub))
        except (ConnectionRefusedError, FileNotFoundError):
            return False  # stale files of a dead publisher
        finally:
            probe.close()
        return True

    def subscribed(self, pid: int, *, count: int = 1) -> bool:
        """Whether process ``pid`` has ``count`` subscriptions the publisher applied."""
        try:
            stats = fetch_stats(self.config, 1.0)
        except SaltbusError:
            return False
        mine = [
            s
            for s in stats["subscribers"]
            if s["peer"].startswith(f"pid {pid} ") and s.get("resumable")
        ]
        return len(mine) >= count


# Run a command with SIGINT at its default, as from a terminal: a shell without job
# control starts background jobs with SIGINT ignored, and pytest run that way
# would hand the ignoring on to the commands whose Ctrl-C these tests send.
WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class Proc:
    """A background saltbus process: stdout lines through a queue, stderr to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None) -> None:
        self.log = log
        with open(log, "w") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", WITH_DEFAULT_SIGINT, os.fspath(SALTBUS), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env or clean_env(),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for raw in iter(stdout.readline, b""):
            self.lines.put(raw.decode("utf-8"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def line(self, timeout: float = WAIT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output line within {timeout} s; stderr: {self.stderr()}"
            ) from None
        assert line is not None, f"output ended; exit {self.popen.poll()}: {self.stderr()}"
        return line

    def rest(self, timeout: float = WAIT) -> list[str]:
        """Every remaining line, until the process closes its output."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"output not closed within {timeout} s"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                return lines
            lines.append(line)

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout)

    def stderr(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(WAIT)
        if self.popen.stdout is not None:
            with contextlib.suppress(OSError):
                self.popen.stdout.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(list(args), tmp_path / f"proc-{len(started)}.log", env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        errors = []
        for proc in reversed(started):  # every one, even when killing another failed
            try:
                proc.kill()
            except Exception as exc:  # pragma: no cover - reported after the others
                errors.append(exc)
        assert not errors, errors


@pytest.fixture
def bus(sock_dir: Path) -> Bus:
    return Bus(sock_dir)


def start_serve(serves: Callable[..., ServeProcess], bus: Bus, *extra: str) -> ServeProcess:
    return serves(bus.config, *bus.flags, "--data-dir", os.fspath(bus.data_dir), *extra)


def start_listen(procs: Callable[..., Proc], bus: Bus, *args: str, **kw: Any) -> Proc:
    listen = procs("listen", *args, **kw)

    def ready() -> bool:
        if listen.popen.poll() is not None:
            raise AssertionError(f"listen exited {listen.popen.returncode}: {listen.stderr()}")
        return bus.subscribed(listen.pid)

    wait_until(ready, "saltbus listen to subscribe")
    return listen


def fire(bus: Bus, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> None:
    result = run("fire", *bus.flags, *args, env=env, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)


def split_line(line: str) -> tuple[str, str]:
    assert line.endswith("\n")
    tag, sep, rest = line[:-1].partition("\t")
    assert sep, line
    return tag, rest


# -- help --------------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    out = result.stdout
    for command in ("serve", "listen", "fire"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), out
    assert "Salt" in out
    assert result.stderr == ""
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("saltbus ")


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("command", _commands())
def test_each_command_help_exits_0_and_explains(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: saltbus {command}")
    assert len(out.splitlines()) > 5
    if command in ("serve", "listen", "fire"):
        for flag in ("--sock-dir", "--config", "--salt-version", "--ipc-mode"):
            assert flag in out, f"{command} --help does not mention {flag}"
        assert "SALTBUS_" in out  # where else a setting may come from


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("serve", ["0700", "0600", "stale", "SIGTERM", "--data-dir"]),
        ("listen", ["TAG", "--tag", "--match-type", "--count", "--pretty", "--json", "Ctrl-C"]),
        ("fire", ["TAG", "DATA", "key=value", "_stamp", "--timeout"]),
    ],
)
def test_command_help_in_a_subprocess(command: str, words: list[str]) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for word in words:
        assert word in text, f"{command} --help does not mention {word}"


# -- end to end -----------------------------------------------------------------------------


def test_serve_listen_fire_end_to_end(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    serve = start_serve(serves, bus)
    listen = start_listen(
        procs, bus, "--tag", "salt/auth", "--match-type", "startswith", "--count", "2", *bus.flags
    )
    fire(bus, "salt/auth", '{"id": "web1", "act": "accept"}')
    fire(bus, "salt/job/20240101/new", "fun=test.ping")  # does not match
    fire(bus, "salt/auth/extra", "n=2", "tags=[1, 2]", "name=web 2")
    assert listen.wait() == 0, listen.stderr()
    lines = listen.rest()
    assert len(lines) == 2, lines
    parsed = []
    for line in lines:
        tag, rest = split_line(line)
        data = json.loads(rest)
        assert rest == json.dumps(data), "not json.dumps(data) with default separators"
        assert STAMP.match(data["_stamp"]), data["_stamp"]
        parsed.append((tag, {k: v for k, v in data.items() if k != "_stamp"}))
    assert parsed == [
        ("salt/auth", {"id": "web1", "act": "accept"}),
        ("salt/auth/extra", {"n": 2, "tags": [1, 2], "name": "web 2"}),
    ]
    assert_clean_stderr(listen.stderr())
    assert serve.alive()
    assert f"serving the master bus in {bus.sock_dir}" in serve.log  # says where


def test_listen_prints_non_ascii_as_salt_does(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    """Salt's state.event prints with ensure_ascii=False (salt.utils.json.dumps)."""
    start_serve(serves, bus)
    listen = start_listen(procs, bus, "--tag", "u/", "--count", "1", *bus.flags)
    fire(bus, "u/1", "name=Zoë", "city=東京")
    assert listen.wait() == 0
    (line,) = listen.rest()
    tag, rest = split_line(line)
    data = json.loads(rest)
    assert (tag, data["name"], data["city"]) == ("u/1", "Zoë", "東京")
    assert rest == json.dumps(data, ensure_ascii=False)


def test_listen_pretty_and_json(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    start_serve(serves, bus)
    pretty = start_listen(procs, bus, "--tag", "app/", "--count", "2", "--pretty", *bus.flags)
    as_json = start_listen(procs, bus, "--tag", "app/", "--count", "2", "--json", *bus.flags)
    fire(bus, "app/deploy", '{"z": 1, "a": {"y": [1, 2], "b": null}}')
    fire(bus, "app/other", "ok=true")
    assert pretty.wait() == 0 and as_json.wait() == 0
    # --pretty: TAG, a tab, then json.dumps(data, sort_keys=True, indent=4) over several lines.
    text = "".join(pretty.rest())
    chunks = re.split(r"(?m)^(?=app/)", text)
    chunks = [c for c in chunks if c]
    assert len(chunks) == 2
    for chunk, tag in zip(chunks, ["app/deploy", "app/other"], strict=True):
        got_tag, sep, rest = chunk.partition("\t")
        assert (got_tag, sep) == (tag, "\t")
        data = json.loads(rest)
        assert rest == json.dumps(data, sort_keys=True, indent=4) + "\n"
    assert "\n    " in text
    # --json: one {"tag", "data"} object per line.
    records = [json.loads(line) for line in as_json.rest()]
    assert [set(r) for r in records] == [{"tag", "data"}] * 2
    assert [r["tag"] for r in records] == ["app/deploy", "app/other"]
    assert records[0]["data"]["a"] == {"y": [1, 2], "b": None}
    assert records[1]["data"]["ok"] is True
    assert all(STAMP.match(r["data"]["_stamp"]) for r in records)


def test_fire_key_value_values_are_json_where_they_are_json_as_written(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    start_serve(serves, bus)
    listen = start_listen(procs, bus, "--tag", "kv", "--count", "1", "--json", *bus.flags)
    fire(
        bus,
        "kv",
        '{"base": 1}',
        "n=1",
        "version=1.10",
        "octal=007",
        "f=1.5",
        "ok=true",
        "nothing=null",
        "list=[1, 2]",
        'obj={"a": 1}',
        'quoted="7"',
        "text=hello world",
        "empty=",
        "eq=a=b",
        "neg=-3",
    )
    assert listen.wait() == 0
    (line,) = listen.rest()
    data = json.loads(line)["data"]
    data.pop("_stamp")
    assert data == {
        "base": 1,
        "n": 1,
        "version": "1.10",
        "octal": "007",
        "f": 1.5,
        "ok": True,
        "nothing": None,
        "list": [1, 2],
        "obj": {"a": 1},
        "quoted": "7",
        "text": "hello world",
        "empty": "",
        "eq": "a=b",
        "neg": -3,
    }


@pytest.mark.parametrize("data", ["[1]", "nokey", "=1", "{not json", "42", '"text"'])
def test_fire_bad_data_exits_2_with_one_line(data: str, sock_dir: Path) -> None:
    # No bus is needed to refuse bad input, and none is running.
    result = run("fire", "--sock-dir", os.fspath(sock_dir / "nobus"), "a/b", data)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saltbus: error: ")
    assert_clean_stderr(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["fire", "a/b", "--timeout", "-1"],
        ["fire", "a/b", "--timeout", "0"],
        ["fire", "a/b", "--timeout", "nan"],
        ["fire", "a/b", "--timeout", "soon"],
        ["stats", "--timeout", "-1"],
        ["doctor", "--timeout", "-1"],
        ["listen", "--count", "-1"],
        ["listen", "--count", "0"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(args: list[str], bus: Bus) -> None:
    """A timeout of -1 once reached socket.settimeout and ended in a traceback;
    --count -1 made listen exit at once, printing nothing."""
    result = run(*args, *bus.flags, timeout=WAIT)
    assert result.returncode == 2, result
    assert f"saltbus {args[0]}: error: argument" in result.stderr
    assert_clean_stderr(result.stderr)


def test_oversized_event_is_refused_by_fire(serves: Callable[..., ServeProcess], bus: Bus) -> None:
    start_serve(serves, bus)
    result = run(
        "fire", *bus.flags, "a/b", "x=" + "y" * 3000, env=clean_env(SALTBUS_MAX_EVENT_SIZE="1000")
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "max_event_size" in lines[0], result.stderr
    assert_clean_stderr(result.stderr)


def test_fire_with_no_bus_exits_1_naming_the_socket(sock_dir: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": sock_dir / "nobus"})
    started = time.monotonic()
    result = run("fire", "--sock-dir", os.fspath(config.sock_dir), "a/b", "x=1")
    took = time.monotonic() - started
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saltbus: error: ")
    assert os.fspath(config.pull_address) in lines[0]  # type: ignore[arg-type]
    assert_clean_stderr(result.stderr)
    assert took < 10


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (["x=NaN"], "x=NaN: NaN is not a JSON number"),
        (['{"a": [Infinity]}'], "data['a'][0] is inf"),
        (["big=123456789012345678901234567890"], "msgpack cannot carry"),
        (["a=1", "a=2"], "'a' twice"),
        (['{"a": 1, "a": 2}'], "'a' twice"),
    ],
)
def test_fire_refuses_what_would_not_come_back_as_written(
    data: list[str], words: str, sock_dir: Path
) -> None:
    """NaN once went out and `listen --json` printed what jq cannot read; a
    big integer became a string; a repeated key kept the last value."""
    result = run("fire", "--sock-dir", os.fspath(sock_dir / "nobus"), "a/b", *data)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert_clean_stderr(result.stderr)


def test_fire_takes_data_past_the_argument_limit_from_stdin_and_a_file(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    """An argument list is limited to ~128 KiB a word: `-` and @FILE are not."""
    start_serve(serves, bus)
    listen = start_listen(procs, bus, "--tag", "big/", "--count", "2", "--json", *bus.flags)
    text = "x" * 300_000
    fire(bus, "big/stdin", "-", "n=1", stdin=json.dumps({"text": text}))
    path = bus.root / "event.json"
    path.write_text(json.dumps({"text": text, "list": [1, 2]}))
    fire(bus, "big/file", f"@{path}")
    assert listen.wait() == 0, listen.stderr()
    first, second = (json.loads(line) for line in listen.rest())
    assert first["tag"] == "big/stdin"
    assert (first["data"]["text"], first["data"]["n"]) == (text, 1)
    assert second["tag"] == "big/file"
    assert (second["data"]["text"], second["data"]["list"]) == (text, [1, 2])


def test_fire_names_a_data_file_it_cannot_read(bus: Bus) -> None:
    missing = bus.root / "missing.json"
    result = run("fire", *bus.flags, "a/b", f"@{missing}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"saltbus: error: cannot read DATA file {missing}: No such file or directory"
    ]


def test_fire_ack_prints_the_sequence_number(serves: Callable[..., ServeProcess], bus: Bus) -> None:
    start_serve(serves, bus)
    seqs = []
    for i in range(3):
        result = run("fire", *bus.flags, "--ack", "acked", f"i={i}")
        assert result.returncode == 0, result.stderr
        seqs.append(int(result.stdout))
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]


# -- publisher restarts, signals, broken pipes -----------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_listen_survives_a_publisher_restart(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus, how: signal.Signals
) -> None:
    serve = start_serve(serves, bus)
    listen = start_listen(procs, bus, "--tag", "restart/", "--count", "3", *bus.flags)
    fire(bus, "restart/before", "n=1")
    assert split_line(listen.line())[0] == "restart/before"
    serve.send_signal(how)
    serve.wait()
    # Fired while no publisher runs: lost, as on Salt's bus.
    assert run("fire", *bus.flags, "restart/nobody", "n=0").returncode == 1
    start_serve(serves, bus)
    # Fired at once, perhaps before listen is back: the journal replays it.
    fire(bus, "restart/during", "n=2")
    wait_until(lambda: bus.subscribed(listen.pid), "listen to subscribe again")
    fire(bus, "restart/after", "n=3")
    assert listen.wait() == 0, listen.stderr()
    tags = [split_line(line)[0] for line in listen.rest()]
    assert tags == ["restart/during", "restart/after"]
    assert_clean_stderr(listen.stderr())


def test_sigint_to_listen_exits_0(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    start_serve(serves, bus)
    listen = start_listen(procs, bus, *bus.flags)
    listen.popen.send_signal(signal.SIGINT)
    assert listen.wait() == 0
    assert_clean_stderr(listen.stderr())


def test_sigint_to_listen_waiting_for_a_publisher_exits_0(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    serve = start_serve(serves, bus)
    listen = start_listen(procs, bus, *bus.flags)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait() == 0
    wait_until(lambda: not bus.pub.exists(), "the publisher to go")
    time.sleep(0.3)  # let listen notice and start waiting; any phase must exit cleanly
    listen.popen.send_signal(signal.SIGINT)
    assert listen.wait() == 0
    assert_clean_stderr(listen.stderr())


def test_listen_no_wait_with_no_publisher_exits_1_naming_the_socket(bus: Bus) -> None:
    result = run("listen", *bus.flags, "--no-wait", "--count", "1", timeout=WAIT)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and os.fspath(bus.pub) in lines[0], result.stderr
    assert lines[0].startswith("saltbus: error: ")
    assert_clean_stderr(result.stderr)


def test_listen_started_before_the_bus_waits_for_it(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    """It once exited 1 at once, though it reconnects after a publisher restart."""
    listen = procs("listen", "--tag", "early/", "--count", "2", *bus.flags)
    wait_until(lambda: "waiting for the bus" in listen.stderr(), "listen to say it waits")
    assert listen.popen.poll() is None
    start_serve(serves, bus)
    wait_until(lambda: bus.subscribed(listen.pid), "listen to subscribe")
    fire(bus, "early/one", "n=1")
    fire(bus, "early/two", "n=2")
    assert listen.wait() == 0, listen.stderr()
    assert [split_line(line)[0] for line in listen.rest()] == ["early/one", "early/two"]
    lines = listen.stderr().splitlines()
    assert len(lines) == 1, lines  # said once, however long it waited
    assert os.fspath(bus.pub) in lines[0] and "--no-wait" in lines[0]


def test_listen_output_closed_early_is_quiet(bus: Bus, serves: Callable[..., ServeProcess]) -> None:
    """`saltbus listen --count 5 | head -1`: the reader goes away after one line."""
    start_serve(serves, bus)
    read_end, write_end = os.pipe()
    with open(bus.root / "listen.err", "w") as stderr:
        listen = subprocess.Popen(
            [os.fspath(SALTBUS), "listen", *bus.flags, "--tag", "pipe/", "--count", "5"],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=stderr,
            env=clean_env(),
        )
    os.close(write_end)
    try:
        wait_until(lambda: bus.subscribed(listen.pid), "listen to subscribe")
        with Sender(bus.config) as sender:
            sender.fire("pipe/1", {"n": 1})
            first = b""
            deadline = time.monotonic() + WAIT
            while not first.endswith(b"\n"):
                assert time.monotonic() < deadline, "no first line"
                ready, _, _ = select.select([read_end], [], [], 0.1)
                if ready:
                    first += os.read(read_end, 1)
            assert first.startswith(b"pipe/1\t")
            os.close(read_end)  # as head -1 exits
            read_end = -1
            n = 2
            while listen.poll() is None:
                assert time.monotonic() < deadline, "listen did not exit after its reader went"
                sender.fire(f"pipe/{n}", {"n": n})
                n += 1
                time.sleep(0.02)
        assert listen.returncode == 0
        assert_clean_stderr((bus.root / "listen.err").read_text())
    finally:
        if read_end >= 0:
            os.close(read_end)
        if listen.poll() is None:
            listen.kill()
        listen.wait(WAIT)


def test_listen_into_head_in_a_shell_pipeline(
    bus: Bus, serves: Callable[..., ServeProcess]
) -> None:
    start_serve(serves, bus)
    script = (
        f'"{SALTBUS}" listen --sock-dir "{bus.sock_dir}" --tag pipe/ --count 5 | head -1; '
        'echo "status ${PIPESTATUS[0]}" >&2'
    )
    shell = subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,  # its own process group, so a kill reaches listen too
    )
    try:
        # listen runs in the shell's pipeline: fire until head has its line and all exit.
        deadline = time.monotonic() + WAIT
        n = 0
        with Sender(bus.config) as sender:
            while shell.poll() is None:
                assert time.monotonic() < deadline, "the pipeline did not finish"
                sender.fire(f"pipe/{n}", {"n": n})
                n += 1
                time.sleep(0.02)
        out, err = shell.communicate(timeout=WAIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(WAIT)
    assert len(out.splitlines()) == 1 and out.startswith("pipe/")
    assert "status 0" in err, err
    assert_clean_stderr(err)


# -- Salt generations and where settings come from -----------------------------------------


def test_salt_version_3006_end_to_end(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    bus = Bus(sock_dir, salt_version="3006")
    version = ["--salt-version", "3006"]
    serve = start_serve(serves, bus, *version)
    assert "3006" in serve.log
    listen = start_listen(procs, bus, "--tag", "old/", "--count", "1", *version, *bus.flags)
    # A Salt 3006 listener (raw): the publish socket now puts a length before each frame.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(os.fspath(bus.pub))
    raw.settimeout(WAIT)
    fire(bus, "old/evt", "n=3006", *version)
    assert listen.wait() == 0
    (line,) = listen.rest()
    tag, rest = split_line(line)
    assert tag == "old/evt" and json.loads(rest)["n"] == 3006
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED)
    first = raw.recv(65536)
    assert first[:1] == b"\x00"
    decoder.receive_data(first)
    frames = list(decoder)
    deadline = time.monotonic() + WAIT
    while not any(f.body.startswith(b"old/evt\n\n") for f in frames):
        assert time.monotonic() < deadline
        decoder.receive_data(raw.recv(65536))
        frames.extend(decoder)
    raw.close()


def test_config_file_sock_dir_is_honoured(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus, tmp_path: Path
) -> None:
    config_file = tmp_path / "saltbus.yaml"
    config_file.write_text(
        f"# a Salt-style config file\nsock_dir: {bus.sock_dir}\ndata_dir: {bus.data_dir}\n"
        "interface: 0.0.0.0  # a Salt option saltbus does not use\n"
    )
    flags = ["--config", os.fspath(config_file)]
    serve = serves(bus.config, *flags)
    assert serve.alive(), serve.log
    assert bus.listening()
    listen = procs("listen", "--tag", "cfg", "--count", "1", *flags)
    wait_until(lambda: bus.subscribed(listen.pid), "listen --config to subscribe")
    result = run("fire", *flags, "cfg/evt", "via=config")
    assert result.returncode == 0, result.stderr
    assert listen.wait() == 0
    (line,) = listen.rest()
    assert json.loads(split_line(line)[1])["via"] == "config"
    assert (bus.data_dir).is_dir()  # data_dir from the file too


def test_saltbus_sock_dir_environment_variable_is_honoured(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    env = clean_env(
        SALTBUS_SOCK_DIR=os.fspath(bus.sock_dir), SALTBUS_DATA_DIR=os.fspath(bus.data_dir)
    )
    serve = serves(bus.config, env=env)
    assert serve.alive(), serve.log
    assert bus.listening()
    listen = procs("listen", "--tag", "env", "--count", "1", env=env)
    wait_until(lambda: bus.subscribed(listen.pid), "listen (env) to subscribe")
    result = run("fire", "env/evt", "via=env", env=env)
    assert result.returncode == 0, result.stderr
    assert listen.wait() == 0
    (line,) = listen.rest()
    assert json.loads(split_line(line)[1])["via"] == "env"


def test_flag_wins_over_environment(
    procs: Callable[..., Proc], serves: Callable[..., ServeProcess], bus: Bus, sock_dir: Path
) -> None:
    start_serve(serves, bus)
    env = clean_env(SALTBUS_SOCK_DIR=os.fspath(sock_dir / "elsewhere"))
    listen = procs("listen", "--tag", "prec", "--count", "1", *bus.flags, env=env)
    wait_until(lambda: bus.subscribed(listen.pid), "listen to subscribe")
    fire(bus, "prec/evt", "n=1", env=env)
    assert listen.wait() == 0
    assert split_line(listen.rest()[0])[0] == "prec/evt"


# -- serve refusing to start ----------------------------------------------------------------


def test_second_serve_on_the_same_sock_dir_exits_1(
    serves: Callable[..., ServeProcess], bus: Bus
) -> None:
    first = start_serve(serves, bus)
    second = run("serve", *bus.flags, "--data-dir", os.fspath(bus.data_dir), timeout=WAIT)
    assert second.returncode == 1
    lines = second.stderr.splitlines()
    assert len(lines) == 1 and os.fspath(bus.sock_dir) in lines[0], second.stderr
    assert_clean_stderr(second.stderr)
    assert first.alive()
    assert bus.listening()


def test_serve_refuses_a_non_socket_at_the_socket_path(bus: Bus) -> None:
    bus.sock_dir.mkdir()
    bus.pub.write_text("not a socket")
    result = run("serve", *bus.flags, "--data-dir", os.fspath(bus.data_dir), timeout=WAIT)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and os.fspath(bus.pub) in lines[0], result.stderr
    assert_clean_stderr(result.stderr)
    assert bus.pub.read_text() == "not a socket"


def test_bad_setting_from_the_environment_exits_2(bus: Bus) -> None:
    env = clean_env(SALTBUS_SALT_VERSION="2019")
    result = run("fire", *bus.flags, "a/b", env=env)
    assert result.returncode == 2
    assert "salt_version" in result.stderr
    assert_clean_stderr(result.stderr)
