"""`saltbus http` as a process: refusing to run open, serving, TLS, stopping."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from saltbus.cli.main import main
from saltbus.client import Sender
from saltbus.config import Config
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, make_tokens

SALTBUS = Path(sys.executable).with_name("saltbus")
WAIT = 15.0


@contextlib.contextmanager
def saltbus_http(
    *args: str, log_level: str = "info"
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`saltbus http ARGS --port 0`; yields the process and its base URL (read
    from what it prints); stopped with SIGINT, which must end it cleanly."""
    proc = subprocess.Popen(
        [str(SALTBUS), "--log-level", log_level, "http", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        found = re.search(r"saltbus http: serving .* on (https?://[^/]+)/", line)
        assert found, f"unexpected first line: {line!r}"
        yield proc, found.group(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        proc.stderr.close()


class LogTail:
    """The rest of a process's log, read by a thread, so that a test can wait
    for a line without blocking on the pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="log-tail", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def wait_for(self, needle: str, count: int = 1) -> None:
        """Wait until ``needle`` was logged ``count`` times."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: "".join(self._lines).count(needle) >= count, WAIT
            )
        assert found, f"{needle!r} not logged {count} times:\n{self.text()}"

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def rest(self, proc: subprocess.Popen[str]) -> str:
        """Everything logged, once ``proc`` is stopped (SIGINT) and gone."""
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        self._thread.join(WAIT)
        return self.text()


def test_refuses_to_run_without_authentication(
    bus_config: Config, capsys: pytest.CaptureFixture[str]
):
    assert main(["http", "--sock-dir", str(bus_config.sock_dir)]) == 2
    assert "refusing to serve without authentication" in capsys.readouterr().err


def test_no_auth_serves_loopback_only(bus_config: Config, capsys: pytest.CaptureFixture[str]):
    code = main(["http", "--no-auth", "--bind", "0.0.0.0", "--sock-dir", str(bus_config.sock_dir)])
    assert code == 2
    assert "loopback only" in capsys.readouterr().err


def test_option_errors(bus_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sock_dir = ["--sock-dir", str(bus_config.sock_dir)]
    assert main(["http", "--tokens", str(tmp_path / "missing.json"), *sock_dir]) == 2
    assert "token create" in capsys.readouterr().err
    assert main(["http", "--no-auth", "--tls-cert", "c.pem", *sock_dir]) == 2
    assert "go together" in capsys.readouterr().err
    missing = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    assert main(["http", "--no-auth", *missing, *sock_dir]) == 2
    assert "cannot use --tls-cert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["http", "--no-auth", "--tokens", "x.json"])


def test_help_explains(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as done:
        main(["http", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for needle in ("/events", "/ws", "/hook/PATH", "Last-Event-ID", "--no-auth", "--tokens"):
        assert needle in text


def test_serves_with_tokens_and_stops_with_open_streams(
    bus_config: Config, publisher: EmbeddedPublisher, tmp_path: Path
):
    secrets = make_tokens(tmp_path / "tokens.json", me=(["*"], ["*"]))
    args = ["--tokens", str(tmp_path / "tokens.json"), "--sock-dir", str(bus_config.sock_dir)]
    with (
        saltbus_http(*args) as (_, url),
        httpx.Client(timeout=10) as client,
    ):
        assert client.get(f"{url}/whoami").status_code == 401
        assert client.get(f"{url}/whoami", headers=bearer(secrets["me"])).json()["name"] == "me"
        with client.stream("GET", f"{url}/events?token={secrets['me']}") as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": keepalive"
            fired = client.post(
                f"{url}/events", json={"tag": "cli/x", "data": {}}, headers=bearer(secrets["me"])
            ).json()
            assert fired["success"] and isinstance(fired["seq"], int)
            assert next(line for line in lines if line.startswith("event:")) == "event: cli/x"
        # An open stream must not hold up the shutdown (checked on exit).
        late = client.stream("GET", f"{url}/events?token={secrets['me']}")
        late.__enter__()
    late.__exit__(None, None, None)


def test_backlog_reads_the_journal_in_the_data_dir(
    bus_config: Config, publisher: EmbeddedPublisher
):
    with Sender(bus_config) as sender:
        last = sender.fire("cli/backlog", {"n": 1}, ack=True)
    assert bus_config.data_dir is not None
    args = ["--no-auth", "--sock-dir", str(bus_config.sock_dir)]
    with (
        saltbus_http(*args, "--data-dir", str(bus_config.data_dir)) as (_, url),
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", f"{url}/events?backlog=1") as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("id:")) == f"id: {last.seq}"
        assert next(lines) == "event: cli/backlog"


def test_websocket_log_hides_the_token_and_a_normal_close_logs_no_error(
    bus_config: Config, publisher: EmbeddedPublisher, tmp_path: Path
):
    secret = make_tokens(tmp_path / "tokens.json", me=(["*"], ["*"]))["me"]
    args = ["--tokens", str(tmp_path / "tokens.json"), "--sock-dir", str(bus_config.sock_dir)]
    # At debug level, where the WebSocket library also logs each request header.
    with saltbus_http(*args, log_level="debug") as (proc, url):
        assert proc.stderr is not None
        log = LogTail(proc.stderr)
        ws_url = url.replace("http://", "ws://", 1)
        headers = {"Authorization": f"Bearer {secret}"}
        ways: list[dict[str, Any]] = [
            {"uri": f"{ws_url}/ws?tag=app/&token={secret}"},
            {"uri": f"{ws_url}/ws?tag=app/", "additional_headers": headers},
        ]
        for number, options in enumerate(ways, start=1):
            with ws_connect(**options, open_timeout=WAIT) as ws:
                ws.send(json.dumps({"tag": "app/log", "data": {}}))
                # The answer and the event itself, in either order.
                got = [json.loads(ws.recv(timeout=WAIT)) for _ in range(2)]
                assert sorted(next(iter(message)) for message in got) == ["fired", "tag"]
            # Closed by the client, as a page or a script does when done.
            log.wait_for("closed its WebSocket (code 1000)", count=number)
        text = log.rest(proc)
    assert secret not in text
    assert secret[:12] not in text  # not even part of it
    assert '"WebSocket /ws?tag=app/&token=…" [accepted]' in text  # the line is still there
    assert '"WebSocket /ws?tag=app/" [accepted]' in text
    assert "Traceback" not in text
    assert "Exception in ASGI" not in text
    assert "ERROR" not in text


def test_no_access_log_leaves_out_websocket_lines_too(
    bus_config: Config, publisher: EmbeddedPublisher
):
    args = ["--no-auth", "--no-access-log", "--sock-dir", str(bus_config.sock_dir)]
    with saltbus_http(*args, log_level="debug") as (proc, url):
        assert proc.stderr is not None
        log = LogTail(proc.stderr)
        with ws_connect(f"{url.replace('http://', 'ws://', 1)}/ws", open_timeout=WAIT):
            pass
        log.wait_for("closed its WebSocket")
        assert httpx.get(f"{url}/whoami", timeout=WAIT).status_code == 200
        text = log.rest(proc)
    assert '"WebSocket /ws"' not in text
    assert '"GET /whoami' not in text


def test_no_auth_says_so(bus_config: Config, publisher: EmbeddedPublisher):
    with saltbus_http("--no-auth", "--sock-dir", str(bus_config.sock_dir)) as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        assert proc.stderr is not None
        assert "NO AUTHENTICATION" in proc.stderr.readline()
        assert httpx.get(f"{url}/whoami", timeout=10).json()["auth"] is False


def test_tls(bus_config: Config, publisher: EmbeddedPublisher, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    args = ["--no-auth", "--tls-cert", str(cert), "--tls-key", str(key)]
    with saltbus_http(*args, "--sock-dir", str(bus_config.sock_dir)) as (_, url):
        assert url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        answer = httpx.get(f"{url}/whoami", verify=trust, timeout=10)
        assert answer.status_code == 200


def test_served_page_files_are_package_data():
    # Installed (not only in the source tree) as the page needs them.
    from importlib.resources import files  # noqa: PLC0415

    static = files("saltbus.http") / "static"
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):
        assert (static / name).is_file(), name
