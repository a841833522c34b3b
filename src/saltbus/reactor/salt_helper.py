"""Runs Salt's reactions for saltbus's reactor, inside Salt's own interpreter.

Started as ``SALT_PYTHON salt_helper.py master|minion CONFIG`` by
:mod:`saltbus.reactor.saltside`, it imports Salt's public client API (and
nothing of saltbus, which is not installed beside Salt), then speaks JSON
lines: first ``{"ready": true, "salt_version": ..., ...}`` (or ``{"ready":
false, "error": ...}`` and exit 1), then one answer per request, in the order
the requests finish:

    {"id": 1, "op": "check"}
    {"id": 2, "op": "local", "fun": "test.ping", "tgt": "*", "tgt_type": "glob",
     "arg": [], "kwarg": {}, "ret": "", "timeout": null, "batch": null}
    {"id": 3, "op": "runner", "fun": "jobs.list_jobs", "arg": [], "kwarg": {}, "timeout": 300}
    {"id": 4, "op": "wheel", "fun": "key.list_all", "arg": [], "kwarg": {}}
    {"id": 5, "op": "caller", "fun": "grains.get", "arg": ["id"], "kwarg": {}}  (minion)
    ->  {"id": 2, "ok": true, "jid": "2026...", "minions": [...]}
    ->  {"id": 3, "ok": false, "error": "..."}

Requests run on a small thread pool, so a long runner does not hold back a
``local`` job. End of input ends the helper. It must run on the Pythons Salt
runs on (3.10 in Salt's onedir packages): no newer syntax here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Answer = dict[str, Any]
Send = Callable[[Answer], None]

WORKERS = 8
DEFAULT_RUNNER_TIMEOUT = 300.0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("master", "minion"):
        sys.stderr.write("usage: salt_helper.py master|minion CONFIG\n")
        return 2
    # The protocol owns the real stdout; anything Salt prints goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lock = threading.Lock()

    def send(message: Answer) -> None:
        line = json.dumps(message, default=repr)
        with lock:
            out.write(line + "\n")
            out.flush()

    try:
        helper = Helper(argv[1], argv[2])
    except Exception as exc:  # everything Salt can raise while loading its config
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send(helper.describe())
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="salt-helper") as pool:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                send({"id": None, "ok": False, "error": f"bad request: {exc}"})
                continue
            pool.submit(helper.answer, request, send)
    return 0


class Helper:
    def __init__(self, role: str, config_path: str) -> None:
        import salt.config  # type: ignore[import-not-found]  # noqa: PLC0415
        import salt.version  # type: ignore[import-not-found]  # noqa: PLC0415

        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no Salt {role} config at {config_path}")
        self.role = role
        self.config_path = config_path
        if role == "master":
            self.opts = salt.config.master_config(config_path)
        else:
            self.opts = salt.config.minion_config(config_path)
        self.version = salt.version.__version__
        self._local = threading.local()
        # One minion (its modules, grains and pillar load once), one call at a
        # time: Salt's minion loader is not made for concurrent callers.
        self._caller: Any = None
        self._caller_lock = threading.Lock()

    def describe(self) -> Answer:
        opts = self.opts
        return {
            "ready": True,
            "role": self.role,
            "salt_version": self.version,
            "python": sys.executable,
            "config": self.config_path,
            "sock_dir": opts.get("sock_dir"),
            "interface": opts.get("interface"),
            "id": opts.get("id"),
            "ret_port": opts.get("ret_port"),
            "user": opts.get("user"),
        }

    def answer(self, request: Answer, send: Send) -> None:
        ident = request.get("id")
        op = request.get("op")
        try:
            handler = getattr(self, "op_" + str(op), None)
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            if op != "check" and (op == "caller") != (self.role == "minion"):
                raise ValueError(f"{op} reactions need a Salt {self.role} helper, not this one")
            result = handler(request)
        except Exception as exc:  # every failure is the reaction's, as text
            send({"id": ident, "ok": False, "error": _why(exc)})
            return
        result.update(id=ident)
        send(result)

    # -- the clients, one per worker thread (their loaders are not thread-safe)

    def _client(self, kind: str) -> Any:
        client = getattr(self._local, kind, None)
        if client is None:
            if kind == "local":
                import salt.client  # type: ignore[import-not-found]  # noqa: PLC0415

                client = salt.client.LocalClient(mopts=self.opts)
            elif kind == "runner":
                import salt.runner  # type: ignore[import-not-found]  # noqa: PLC0415

                client = salt.runner.RunnerClient(self.opts)
            else:
                import salt.wheel  # type: ignore[import-not-found]  # noqa: PLC0415

                client = salt.wheel.WheelClient(self.opts)
            setattr(self._local, kind, client)
        return client

    def _auth(self) -> dict[str, str]:
        """The master's key for this user: what Salt's own CLI tools send."""
        import salt.utils.master  # type: ignore[import-not-found]  # noqa: PLC0415
        import salt.utils.user  # type: ignore[import-not-found]  # noqa: PLC0415

        user = salt.utils.user.get_user()
        key = salt.utils.master.get_master_key(user, self.opts)
        if not key:
            path = os.path.join(self.opts["cachedir"], f".{self.opts.get('user', user)}_key")
            raise PermissionError(
                f"cannot read the master's key {path}: run the reactor as the master's "
                f"user ({self.opts.get('user', 'root')}) or as root"
            )
        return {"user": user, "key": key}

    # -- operations ---------------------------------------------------------------

    def op_check(self, request: Answer) -> Answer:
        if self.role == "minion":
            # The minion's execution modules load here, as a caller reaction needs them.
            with self._caller_lock:
                self._minion()
            return {"ok": True, "minion": self.opts.get("id")}
        self._auth()
        return {"ok": True, "master": self._reach_master()}

    def op_caller(self, request: Answer) -> Answer:
        low = _low(request)
        with self._caller_lock:
            value = self._minion().cmd(low["fun"], *low["arg"], **low["kwarg"])
        return {"ok": True, "success": True, "return": value}

    def _minion(self) -> Any:
        if self._caller is None:
            import salt.client  # noqa: PLC0415

            self._caller = salt.client.Caller(mopts=self.opts)
        return self._caller

    def _reach_master(self) -> str:
        """Fail fast, and clearly, when the master is down: Salt's clients
        would wait for their request timeouts and say less."""
        host = self.opts.get("interface") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        port = int(self.opts.get("ret_port", 4506))
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as exc:
            raise ConnectionError(
                f"the Salt master is not running: nothing answers on {host}:{port} "
                f"({exc.strerror or exc}; config {self.config_path})"
            ) from None
        return f"{host}:{port}"

    def op_local(self, request: Answer) -> Answer:
        self._reach_master()
        client = self._client("local")
        tgt = request["tgt"]
        fun = request["fun"]
        arg = list(request.get("arg") or [])
        kwarg = dict(request.get("kwarg") or {})
        tgt_type = request.get("tgt_type") or "glob"
        ret = request.get("ret") or ""
        extra = {}
        if request.get("timeout"):
            extra["timeout"] = request["timeout"]
        if request.get("batch"):
            # A batch waits for each batch's minions before the next: Salt's
            # cmd_batch, run to its end here, its returns collected.
            returns = {}
            jids = set()
            for part in client.cmd_batch(
                tgt, fun, arg, tgt_type, ret, kwarg, batch=str(request["batch"]), **extra
            ):
                for minion, value in part.items():
                    if isinstance(value, dict) and "jid" in value:
                        jids.add(value["jid"])
                    returns[minion] = value.get("ret", value) if isinstance(value, dict) else value
            return {
                "ok": True,
                "success": bool(returns),
                "jid": sorted(jids)[0] if len(jids) == 1 else None,
                "jids": sorted(jids),
                "minions": sorted(returns),
                "return": returns,
            }
        # cmd_async's own path, keeping the minions it reports: no waiting for them.
        pub = client.run_job(
            tgt, fun, arg, tgt_type, ret, jid="", kwarg=kwarg, listen=False, **extra
        )
        if not pub or not pub.get("jid"):
            raise RuntimeError(
                f"the Salt master published no job for {fun} on {tgt!r} ({tgt_type}): "
                "no minion matched, or the master refused it (see its log)"
            )
        minions = sorted(pub.get("minions") or [])
        return {"ok": True, "success": bool(minions), "jid": pub["jid"], "minions": minions}

    def op_runner(self, request: Answer) -> Answer:
        self._reach_master()
        low = _low(request)
        low.update(self._auth())
        timeout = request.get("timeout") or DEFAULT_RUNNER_TIMEOUT
        event = self._client("runner").cmd_sync(low, timeout=timeout, full_return=True)
        return _returned(event.get("data", {}) if isinstance(event, dict) else {})

    def op_wheel(self, request: Answer) -> Answer:
        self._reach_master()
        low = _low(request)
        low.update(self._auth())
        reply = self._client("wheel").master_call(**low)
        return _returned(reply.get("data", {}) if isinstance(reply, dict) else {})


def _low(request: Answer) -> Answer:
    """Salt's low data: with both arg and kwarg, Salt passes them as they are."""
    return {
        "fun": request["fun"],
        "arg": list(request.get("arg") or []),
        "kwarg": dict(request.get("kwarg") or {}),
    }


def _returned(data: Answer) -> Answer:
    success = data.get("success")
    value = data.get("return")
    if success is None:
        success = not (isinstance(value, str) and value.startswith("Exception occurred"))
    return {"ok": True, "success": bool(success), "jid": data.get("jid"), "return": value}


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if type(exc).__name__ in ("SaltClientError", "SaltReqTimeoutError") and "master" not in text:
        text = f"cannot reach the Salt master: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main(sys.argv))
