"""What reactions do: the actions saltbus runs without a Salt master.

- ``cmd.run``: run a program (an argument list; a shell only with
  ``shell: true``), with ``cwd``, ``env`` (added to the reactor's own) and
  ``timeout`` (default 300 s, 0: none; the whole process group is killed),
  on a worker thread (see :mod:`.command`). Result ``{retcode, stdout,
  stderr}`` (each output kept to 64 KiB); success is exit status 0.
- ``event.send``: fire ``tag`` with ``data``; the event records its cause.
- ``http.post``: POST ``json`` (default: the trigger's ``{tag, data}``) to
  ``url`` with ``headers``; connection errors, timeouts, 408, 429 and 5xx are
  retried ``retries`` times (default 3), waiting ``backoff`` (0.5 s) doubled
  each time. Result ``{status, body, attempts}``; success is a 2xx status.
- ``python``: call ``package.module:function(tag, data, **kwargs)`` in a
  worker thread (a coroutine function is awaited); its return value is the
  result, and an exception it raises is the error.
- Salt's ``local`` (``cmd``), ``runner`` and ``wheel``: sent to the Salt
  master through :class:`~.saltside.SaltLink`; ``caller``: run with the
  minion's config and modules (result ``{return}``). ``local`` publishes the job
  and does not wait for minions: result ``{jid, minions}`` (success: some
  minion was targeted); ``runner`` and ``wheel`` wait for the return: result
  ``{jid, return}``, success as Salt reports it.

Blocking work runs on the reactor's thread pool, never on the event loop,
so a reactor inside ``saltbus serve`` cannot stall the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import importlib
import inspect
import json
import os
import shlex
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from saltbus.reactor.causes import Cause, with_cause
from saltbus.reactor.command import OUTPUT_LIMIT, Commands, CommandTimeoutError
from saltbus.reactor.errors import ActionError
from saltbus.reactor.saltside import SaltLinks
from saltbus.reactor.spec import Reaction

RETRY_STATUSES: Final = frozenset({408, 429})

Fire = Callable[[str, Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Trigger:
    """The event a reaction runs for."""

    tag: str
    data: Mapping[str, Any]
    seq: int | None
    cause: Cause


@dataclass(frozen=True, slots=True)
class Outcome:
    success: bool
    result: Any = None
    error: str | None = None


class Actions:
    def __init__(self, fire: Fire, executor: Executor, salt: SaltLinks) -> None:
        self._fire = fire
        self._executor = executor
        self.salt = salt
        self.commands = Commands()

    async def run(self, reaction: Reaction, trigger: Trigger) -> Outcome:
        """Run one reaction; raises :class:`ActionError` when it could not run."""
        opts = reaction.options
        if reaction.client is not None:
            return await self._salt(reaction)
        if reaction.function == "cmd.run":
            return await self._cmd_run(opts)
        if reaction.function == "event.send":
            cause = trigger.cause.then(reaction.name, trigger.tag, trigger.seq)
            await self._fire(opts["tag"], with_cause(opts["data"], cause))
            return Outcome(True, {"tag": opts["tag"]})
        if reaction.function == "http.post":
            return await self._http_post(opts, trigger)
        if reaction.function == "python":
            return await self._python(opts, trigger)
        raise ActionError(f"no such action {reaction.function!r}")  # spec.py forbids it

    # -- cmd.run -----------------------------------------------------------------

    async def _cmd_run(self, opts: Mapping[str, Any]) -> Outcome:
        cmd = opts["cmd"]
        if opts["shell"]:
            command: str | list[str] = cmd if isinstance(cmd, str) else " ".join(cmd)
        else:
            command = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        env = {**os.environ, **opts["env"]} if opts["env"] else None
        timeout = opts["timeout"] or None
        run = functools.partial(
            self.commands.run,
            command,
            shell=opts["shell"],
            cwd=opts.get("cwd"),
            env=env,
            timeout=timeout,
        )
        try:
            retcode, stdout, stderr = await asyncio.get_running_loop().run_in_executor(
                self._executor, run
            )
        except OSError as exc:
            program = cmd if isinstance(cmd, str) else cmd[0]
            raise ActionError(f"cannot run {program!r}: {exc.strerror or exc}") from None
        except CommandTimeoutError:
            raise ActionError(
                f"timed out after {timeout:g} s; its process group was killed"
            ) from None
        result = {"retcode": retcode, "stdout": stdout, "stderr": stderr}
        if retcode == 0:
            return Outcome(True, result)
        why = f"killed by signal {-retcode}" if retcode < 0 else f"exited with status {retcode}"
        return Outcome(False, result, f"command {why}")

    # -- Salt's local, runner and wheel ---------------------------------------------

    async def _salt(self, reaction: Reaction) -> Outcome:
        opts = dict(reaction.options)
        client = opts.pop("client")
        request = {"op": client, **opts}
        answer = await self.salt.for_client(client).call(request, opts.get("timeout"))
        if not answer.get("ok"):
            error = str(answer.get("error") or "no reason given")
            raise ActionError(f"{client} {opts['fun']}: {error}")
        result = {k: v for k, v in answer.items() if k not in ("id", "ok", "success")}
        if answer.get("success"):
            return Outcome(True, result)
        why = "no minion was targeted" if client == "local" else "Salt reports it failed"
        return Outcome(False, result, f"{client} {opts['fun']}: {why}")

    # -- http.post ---------------------------------------------------------------

    async def _http_post(self, opts: Mapping[str, Any], trigger: Trigger) -> Outcome:
        payload = opts.get("json")
        if payload is None:
            payload = {"tag": trigger.tag, "data": trigger.data}
        body = json.dumps(payload, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "saltbus-reactor"}
        headers.update(opts["headers"])
        loop = asyncio.get_running_loop()
        attempts = opts["retries"] + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(opts["backoff"] * 2 ** (attempt - 1))
            try:
                status, text = await loop.run_in_executor(
                    self._executor, _post, opts["url"], body, headers, opts["timeout"] or None
                )
            except OSError as exc:  # URLError, timeouts, refused connections
                last = str(getattr(exc, "reason", None) or exc)
                continue
            result = {"status": status, "body": text, "attempts": attempt + 1}
            if 200 <= status < 300:
                return Outcome(True, result)
            if status < 500 and status not in RETRY_STATUSES:
                return Outcome(False, result, f"HTTP {status} from {opts['url']}")
            last = f"HTTP {status}"
        return Outcome(
            False, None, f"POST {opts['url']} failed after {attempts} attempt(s): {last}"
        )

    # -- python ------------------------------------------------------------------

    async def _python(self, opts: Mapping[str, Any], trigger: Trigger) -> Outcome:
        target = opts["function"]
        loop = asyncio.get_running_loop()
        function = await loop.run_in_executor(self._executor, _resolve, target)
        # A copy: the trigger's data is shared by every reaction to it.
        data = copy.deepcopy(dict(trigger.data))
        kwargs = opts["kwargs"]
        try:
            if inspect.iscoroutinefunction(function):
                value = await function(trigger.tag, data, **kwargs)
            else:
                value = await loop.run_in_executor(
                    self._executor, lambda: function(trigger.tag, data, **kwargs)
                )
        except Exception as exc:
            raise ActionError(f"{target} raised {type(exc).__name__}: {exc}") from exc
        return Outcome(True, _plain(value))


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float | None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), _text(response.read(OUTPUT_LIMIT + 1))
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            return int(exc.code), _text(exc.read(OUTPUT_LIMIT + 1))


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except ImportError as exc:
        raise ActionError(f"cannot import {module_name}: {exc}") from None
    except AttributeError:
        raise ActionError(f"{module_name} has no {attribute}") from None
    if not callable(value):
        raise ActionError(f"{target} is not callable")
    return value  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """A return value as data an event can carry (JSON types; others as text)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)


def _text(raw: bytes) -> str:
    text = raw[:OUTPUT_LIMIT].decode("utf-8", "replace")
    return text + "\n[truncated]" if len(raw) > OUTPUT_LIMIT else text
