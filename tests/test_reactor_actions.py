"""saltbus.reactor.actions: cmd.run with real processes, http.post against a local
HTTP server, python functions from an import path, event.send, refusals, and Salt's
reactions failing with the reason when Salt cannot be reached (tests/interop/
test_interop_salt_reactions.py runs them against a real Salt master)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from saltbus.config import Config
from saltbus.reactor.actions import OUTPUT_LIMIT, Actions, Outcome, Trigger
from saltbus.reactor.causes import CAUSE_KEY, Cause
from saltbus.reactor.errors import ActionError, SaltUnreachableError
from saltbus.reactor.saltside import SaltLinks
from saltbus.reactor.spec import Reaction, parse_reactions

TRIGGER = Trigger("app/deploy/web1", {"version": "1.2", "host": "web1"}, 41, Cause())


def reaction(action: str, /, **args: Any) -> Reaction:
    doc = {"r": {action: [{k: v} for k, v in args.items()]}}
    (parsed,) = parse_reactions(doc, Path("/r.sls"), {"r": 1})
    return parsed


# Salt's reactions need Salt: here, a salt_python that does not exist.
NO_SALT = Config.load(
    env={}, overrides={"sock_dir": "/nonexistent", "salt_python": "/nonexistent/python3"}
)


def run(r: Reaction, trigger: Trigger = TRIGGER) -> tuple[Outcome, list[tuple[str, Any]]]:
    fired: list[tuple[str, Any]] = []

    async def fire(tag: str, data: Any) -> None:
        fired.append((tag, data))

    async def main() -> Outcome:
        link = SaltLinks(NO_SALT, env={})
        try:
            with ThreadPoolExecutor(2) as pool:
                return await Actions(fire, pool, link).run(r, trigger)
        finally:
            await link.close()

    return asyncio.run(main()), fired


# -- cmd.run --------------------------------------------------------------------


def test_command_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "deployed"
    outcome, _ = run(reaction("cmd.run", cmd=["sh", "-c", f"echo 1.2 > {out}; echo done"]))
    assert outcome == Outcome(True, {"retcode": 0, "stdout": "done\n", "stderr": ""})
    assert out.read_text() == "1.2\n"


def test_no_shell_unless_asked(tmp_path: Path) -> None:
    plain, _ = run(reaction("cmd.run", cmd="echo $HOME 'a b'"))
    assert plain.result["stdout"] == "$HOME a b\n"
    shell, _ = run(reaction("cmd.run", cmd="echo $X", shell=True, env={"X": "from-env"}))
    assert shell.result["stdout"] == "from-env\n"


def test_cwd_and_env(tmp_path: Path) -> None:
    outcome, _ = run(
        reaction("cmd.run", cmd=["sh", "-c", "pwd; echo $N"], cwd=str(tmp_path), env={"N": 5})
    )
    assert outcome.result["stdout"] == f"{tmp_path}\n5\n"


def test_failing_command_is_an_error_with_its_output() -> None:
    outcome, _ = run(reaction("cmd.run", cmd=["sh", "-c", "echo oops >&2; exit 3"]))
    assert not outcome.success
    assert outcome.error == "command exited with status 3"
    assert outcome.result == {"retcode": 3, "stdout": "", "stderr": "oops\n"}


def test_missing_program() -> None:
    with pytest.raises(ActionError, match="cannot run 'no-such-program-x'"):
        run(reaction("cmd.run", cmd=["no-such-program-x"]))


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    with pytest.raises(ActionError, match=r"timed out after 0\.5 s"):
        run(reaction("cmd.run", cmd=["sh", "-c", script], timeout="500ms"))
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the grandchild survived the timeout"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_output_is_capped() -> None:
    outcome, _ = run(
        reaction("cmd.run", cmd=["sh", "-c", f"head -c {OUTPUT_LIMIT + 1000} /dev/zero"])
    )
    assert outcome.success
    assert outcome.result["stdout"].endswith("[1000 more bytes not kept]")


# -- event.send -----------------------------------------------------------------


def test_event_send_records_its_cause() -> None:
    outcome, fired = run(reaction("event.send", tag="app/seen", data={"v": 1}))
    assert outcome == Outcome(True, {"tag": "app/seen"})
    ((tag, data),) = fired
    assert tag == "app/seen"
    assert data == {
        "v": 1,
        CAUSE_KEY: {"depth": 1, "chain": [{"reaction": "r", "tag": TRIGGER.tag, "seq": 41}]},
    }


# -- http.post ------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    statuses: list[int]
    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(
            {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
        )
        status = self.statuses.pop(0) if self.statuses else 200
        reply = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"statuses": [], "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_post_sends_the_event_by_default(http_server: tuple[str, type[Recorder]]) -> None:
    url, handler = http_server
    outcome, _ = run(reaction("http.post", url=f"{url}/hook", headers={"X-Token": "t"}))
    assert outcome == Outcome(True, {"status": 200, "body": '{"ok": true}', "attempts": 1})
    (request,) = handler.requests
    assert request["path"] == "/hook"
    assert request["json"] == {"tag": TRIGGER.tag, "data": dict(TRIGGER.data)}
    assert request["headers"]["X-Token"] == "t"
    assert request["headers"]["Content-Type"] == "application/json"


def test_post_retries_server_errors_with_backoff(http_server: tuple[str, type[Recorder]]) -> None:
    url, handler = http_server
    handler.statuses = [500, 503]
    started = time.monotonic()
    outcome, _ = run(reaction("http.post", url=url, json={"a": 1}, backoff="100ms", retries=3))
    assert outcome.success and outcome.result["attempts"] == 3
    assert time.monotonic() - started >= 0.3  # 0.1 s, then 0.2 s
    assert [r["json"] for r in handler.requests] == [{"a": 1}] * 3


def test_post_does_not_retry_client_errors(http_server: tuple[str, type[Recorder]]) -> None:
    url, handler = http_server
    handler.statuses = [404]
    outcome, _ = run(reaction("http.post", url=url, backoff="10ms"))
    assert not outcome.success and outcome.error == f"HTTP 404 from {url}"
    assert len(handler.requests) == 1


def test_post_to_nothing_fails_after_its_retries(http_server: tuple[str, type[Recorder]]) -> None:
    url, _ = http_server
    dead = url.rsplit(":", 1)[0] + ":9"  # discard: nothing listens
    outcome, _ = run(reaction("http.post", url=dead, retries=2, backoff="10ms", timeout=2))
    assert not outcome.success
    assert outcome.error is not None and "failed after 3 attempt(s)" in outcome.error


# -- python ---------------------------------------------------------------------


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "reactor_hooks_t.py").write_text(
        "import asyncio\n"
        "calls = []\n"
        "def on_deploy(tag, data, **kwargs):\n"
        "    data['mutated'] = True\n"
        "    calls.append((tag, data, kwargs))\n"
        "    return {'seen': data['version'], 'kwargs': kwargs}\n"
        "def fails(tag, data):\n"
        "    raise RuntimeError('no ' + data['version'])\n"
        "async def later(tag, data):\n"
        "    await asyncio.sleep(0)\n"
        "    return tag\n"
        "def odd(tag, data):\n"
        "    return {1, 2}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.usefixtures("hooks")
def test_python_function_gets_tag_data_and_kwargs() -> None:
    import reactor_hooks_t  # type: ignore[import-not-found]  # noqa: PLC0415

    outcome, _ = run(reaction("python", function="reactor_hooks_t:on_deploy", kwargs={"n": 1}))
    assert outcome == Outcome(True, {"seen": "1.2", "kwargs": {"n": 1}})
    assert reactor_hooks_t.calls[0][0] == TRIGGER.tag
    assert "mutated" not in TRIGGER.data  # it was given a copy


@pytest.mark.usefixtures("hooks")
def test_python_errors_and_other_forms() -> None:
    with pytest.raises(ActionError, match=r"reactor_hooks_t:fails raised RuntimeError: no 1\.2"):
        run(reaction("python", function="reactor_hooks_t:fails"))
    assert run(reaction("python", function="reactor_hooks_t:later"))[0].result == TRIGGER.tag
    assert run(reaction("python", function="reactor_hooks_t:odd"))[0].result == "{1, 2}"
    with pytest.raises(ActionError, match="cannot import no_such_module_x"):
        run(reaction("python", function="no_such_module_x:f"))
    with pytest.raises(ActionError, match="has no nothing"):
        run(reaction("python", function="reactor_hooks_t:nothing"))


@pytest.mark.parametrize("action", ["runner.state.orchestrate", "caller.file.touch"])
def test_salt_reactions_without_salt_fail_with_the_reason(action: str) -> None:
    with pytest.raises(SaltUnreachableError, match="salt_python /nonexistent/python3 is not"):
        run(reaction(action, name="x"))


def test_salt_reactions_without_a_salt_config_name_where_they_looked(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    config = NO_SALT.replace(
        salt_python=python, salt_master_config=tmp_path / "nomaster", salt_minion_config=None
    )

    async def main(action: str, env: dict[str, str]) -> str:
        links = SaltLinks(config, env=env)
        try:
            with ThreadPoolExecutor(1) as pool:
                await Actions(_no_fire, pool, links).run(reaction(action, name="x"), TRIGGER)
        except SaltUnreachableError as exc:
            return str(exc)
        finally:
            await links.close()
        raise AssertionError("no error")

    master = asyncio.run(main("wheel.key.accept", {}))
    assert master.startswith(f"no Salt master config at {tmp_path / 'nomaster'}: ")
    minion = asyncio.run(main("caller.test.ping", {"SALT_MINION_CONFIG": "/no/minion"}))
    assert minion.startswith("no Salt minion config at /no/minion: ")
    assert "SALT_MINION_CONFIG" in minion


async def _no_fire(tag: str, data: Any) -> None:
    raise AssertionError(f"fired {tag}")


def test_commands_do_not_inherit_a_stdin() -> None:
    outcome, _ = run(reaction("cmd.run", cmd=["sh", "-c", "cat; echo end"]))
    assert outcome.result["stdout"] == "end\n"
