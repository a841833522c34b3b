"""Reaching the Salt master for Salt's own reactions (local, runner, wheel).

saltbus does not import Salt: Salt runs on its own interpreter (Python 3.10
in Salt's onedir packages, a venv or the distro's Python otherwise), often
not the one saltbus runs on. So :class:`SaltLink` starts ``salt_helper.py``
with Salt's interpreter, once, and keeps it running: requests and answers go
as JSON lines over its stdin and stdout, and each reaction costs a line, not
a process start (about a second of Salt imports).

Salt's interpreter is, in this order: the ``salt_python`` setting; the
interpreter of ``salt-master`` (or ``salt-call``, ``salt-run``) found on PATH,
read from its ``#!`` line or, for Salt's onedir packages, the ``bin/python3*``
beside the script it links to; a ``python3`` on PATH that imports salt.

The master's config is found as Salt's tools find it: the ``salt_master_config``
setting (``saltbus react --config`` given the master's own config file sets it),
else ``$SALT_MASTER_CONFIG``, else ``/etc/salt/master``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from saltbus.config import Config
from saltbus.reactor.errors import SaltUnreachableError
from saltbus.reactor.saltapi import SaltApi

log = logging.getLogger("saltbus.reactor.salt")

HELPER: Final = Path(__file__).with_name("salt_helper.py")
DEFAULT_MASTER_CONFIG: Final = Path("/etc/salt/master")
DEFAULT_MINION_CONFIG: Final = Path("/etc/salt/minion")
SALT_PROGRAMS: Final = ("salt-master", "salt-call", "salt-run")
READY_TIMEOUT: Final = 60.0
# How long to wait for an answer beyond the reaction's own timeout.
ANSWER_MARGIN: Final = 30.0
DEFAULT_ANSWER_TIMEOUT: Final = 300.0
LINE_LIMIT: Final = 64 * 1024 * 1024
PROBE_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 5.0
RESTART_BACKOFF: Final = 5.0


@dataclass(frozen=True, slots=True)
class SaltPython:
    path: Path
    how: str  # how it was found, for `saltbus react --check`


def master_config_path(config: Config, env: Mapping[str, str] | None = None) -> Path:
    if config.salt_master_config is not None:
        return config.salt_master_config
    environ = os.environ if env is None else env
    if environ.get("SALT_MASTER_CONFIG"):
        return Path(environ["SALT_MASTER_CONFIG"])
    return DEFAULT_MASTER_CONFIG


def minion_config_path(config: Config, env: Mapping[str, str] | None = None) -> Path:
    if config.salt_minion_config is not None:
        return config.salt_minion_config
    environ = os.environ if env is None else env
    if environ.get("SALT_MINION_CONFIG"):
        return Path(environ["SALT_MINION_CONFIG"])
    return DEFAULT_MINION_CONFIG


def find_salt_python(config: Config, env: Mapping[str, str] | None = None) -> SaltPython:
    """Salt's interpreter; :class:`SaltUnreachableError` (one line) when none is found."""
    if config.salt_python is not None:
        if not os.access(config.salt_python, os.X_OK):
            raise SaltUnreachableError(
                f"salt_python {config.salt_python} is not an executable file; set it to the "
                "python Salt runs on (e.g. /opt/saltstack/salt/bin/python3)"
            )
        return SaltPython(config.salt_python, "the salt_python setting")
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    for program in SALT_PROGRAMS:
        found = shutil.which(program, path=path)
        if found is not None:
            python = _interpreter_of(Path(found))
            if python is not None:
                return SaltPython(python, f"the interpreter of {found}")
    for name in ("python3", "python"):
        found = shutil.which(name, path=path)
        if found is not None and _imports_salt(Path(found)):
            return SaltPython(Path(found), f"{found} on PATH, which imports salt")
    raise SaltUnreachableError(
        "no Salt found for the local/runner/wheel reactions: set salt_python to the python "
        "Salt runs on (e.g. /opt/saltstack/salt/bin/python3), or put salt-master on PATH"
    )


def _interpreter_of(script: Path) -> Path | None:
    try:
        with script.open("rb") as file:
            first = file.readline(512)
    except OSError:
        return None
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words and words[0].endswith("/env") and len(words) > 1:
            words = words[1:]
            which = shutil.which(words[0])
            words[0] = which or words[0]
        if words and "python" in Path(words[0]).name and os.access(words[0], os.X_OK):
            return Path(words[0])
    # Salt's onedir packages: /usr/bin/salt-master links to a script beside bin/python3.x.
    real = script.resolve().parent
    for candidate in sorted(real.glob("bin/python3*")) + sorted(real.glob("python3*")):
        if os.access(candidate, os.X_OK) and candidate.is_file():
            return candidate
    return None


def _imports_salt(python: Path) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-c", "import salt.client"],
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class SaltLink:
    """The running helper: :meth:`call` sends one request and waits for its
    answer. Started at the first call; started again at the next call after
    it died (a crash fails the calls in flight, with the reason)."""

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str] | None = None,
        *,
        role: str = "master",
        announce: bool = True,
    ) -> None:
        self._config = config
        self._env = env
        self.role = role
        self._announce = announce
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._stderr_tail: list[str] = []
        self.ready: dict[str, Any] | None = None
        self.python: SaltPython | None = None
        self._failed: tuple[float, str] | None = None  # when, and why

    @property
    def salt_config(self) -> Path:
        """The master's config (local, runner, wheel) or the minion's (caller)."""
        if self.role == "minion":
            return minion_config_path(self._config, self._env)
        return master_config_path(self._config, self._env)

    async def start(self) -> dict[str, Any]:
        """Start the helper (if it is not running); its ready line.

        After a failed start the same failure is reported, without trying
        again, for RESTART_BACKOFF seconds: a burst of events must not start
        Salt's interpreter (a second of imports) once per reaction."""
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None and self.ready:
                return self.ready
            now = time.monotonic()
            if self._failed is not None and now - self._failed[0] < RESTART_BACKOFF:
                raise SaltUnreachableError(self._failed[1])
            await self._close_process()
            try:
                ready = await self._start()
            except SaltUnreachableError as exc:
                self._failed = (now, str(exc))
                raise
            self._failed = None
            return ready

    async def _start(self) -> dict[str, Any]:
        python = self.python = find_salt_python(self._config, self._env)
        config_file = self.salt_config
        if not config_file.is_file():
            raise SaltUnreachableError(
                f"no Salt {self.role} config at {config_file}: give the {self.role}'s config "
                f"with --config, or set salt_{self.role}_config or "
                f"SALT_{self.role.upper()}_CONFIG"
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                str(python.path),
                str(HELPER),
                self.role,
                str(config_file),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise SaltUnreachableError(
                f"cannot start {python.path} ({python.how}): {exc.strerror or exc}"
            ) from None
        assert proc.stdout is not None and proc.stderr is not None
        self._stderr_tail = []
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        ready = _decode(line)
        if ready is None or not ready.get("ready"):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rest = await proc.stderr.read()
            await proc.wait()
            why = (ready or {}).get("error") or _last_line(rest) or "it said nothing"
            if "No module named 'salt'" in why:
                why = f"{python.path} cannot import salt"
            raise SaltUnreachableError(
                f"Salt's python {python.path} ({python.how}) could not load the {self.role} "
                f"config {config_file}: {why}"
            )
        self._proc = proc
        self.ready = ready
        self._tasks = [
            asyncio.create_task(self._read_answers(proc.stdout), name="salt-helper-out"),
            asyncio.create_task(self._read_stderr(proc.stderr), name="salt-helper-err"),
        ]
        log.log(
            logging.INFO if self._announce else logging.DEBUG,
            "Salt %s reached through %s (%s), %s config %s",
            ready.get("salt_version"),
            python.path,
            python.how,
            self.role,
            config_file,
        )
        return ready

    async def call(
        self, request: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """The helper's answer to ``request`` (``{"ok": ..., ...}``); raises
        :class:`SaltUnreachableError` when the helper cannot be started or dies."""
        await self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        line = json.dumps({**request, "id": ident}, default=str) + "\n"
        wait = (timeout or DEFAULT_ANSWER_TIMEOUT) + ANSWER_MARGIN
        try:
            proc.stdin.write(line.encode("utf-8"))
            await proc.stdin.drain()
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except (BrokenPipeError, ConnectionResetError):
            raise SaltUnreachableError(f"Salt's helper exited: {self._why_exited()}") from None
        except TimeoutError:
            raise SaltUnreachableError(f"no answer from Salt's helper in {wait:g} s") from None
        finally:
            self._waiting.pop(ident, None)

    async def _read_answers(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # an answer over LINE_LIMIT: the stream cannot go on
                line = b""
            if not line:
                break
            answer = _decode(line)
            if answer is None:
                log.warning("Salt's helper said: %s", line.decode("utf-8", "replace").rstrip())
                continue
            future = self._waiting.get(answer.get("id", -1))
            if future is not None and not future.done():
                future.set_result(answer)
        if self._proc is not None:
            await self._proc.wait()
        why = f"Salt's helper exited: {self._why_exited()}"
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SaltUnreachableError(why))
        self.ready = None

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr_tail = [*self._stderr_tail[-4:], text]
                log.debug("salt helper: %s", text)

    def _why_exited(self) -> str:
        code = self._proc.returncode if self._proc is not None else None
        tail = self._stderr_tail[-1] if self._stderr_tail else "no message"
        return f"exit status {code}: {tail}"

    async def close(self) -> None:
        async with self._lock:
            await self._close_process()

    async def _close_process(self) -> None:
        proc, self._proc = self._proc, None
        self.ready = None
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()  # end of input ends the helper
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _last_line(raw: bytes) -> str:
    lines = [x for x in raw.decode("utf-8", "replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


class SaltLinks:
    """One helper for the master (local, runner, wheel) and one for the
    minion (caller), each started when a reaction first needs it; with a
    ``salt_api:`` section, the master is reached through salt-api instead."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.master: SaltLink | SaltApi = (
            SaltApi(config.salt_api) if config.salt_api else SaltLink(config, env, role="master")
        )
        self.minion = SaltLink(config, env, role="minion")

    def for_client(self, client: str) -> SaltLink | SaltApi:
        return self.minion if client == "caller" else self.master

    async def close(self) -> None:
        await self.master.close()
        await self.minion.close()
