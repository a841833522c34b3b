"""`saltbus http` as a process: refusing to run open, serving, TLS, stopping."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from saltbus.cli.main import main
from saltbus.config import Config
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, make_tokens

SALTBUS = Path(sys.executable).with_name("saltbus")
WAIT = 15.0


@contextlib.contextmanager
def saltbus_http(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`saltbus http ARGS --port 0`; yields the process and its base URL (read
    from what it prints); stopped with SIGINT, which must end it cleanly."""
    proc = subprocess.Popen(
        [str(SALTBUS), "http", "--port", "0", *args],
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
