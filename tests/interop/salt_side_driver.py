"""A long-running Salt client, driven one JSON request per line.

This script is *executed* by a Salt venv's python, never imported by the test process
(which has no Salt); its test side is ``tests/interop/salt_driver_client.py``.

``salt_side_peer.py`` starts one Salt process per fire or listen; Salt's imports cost about
0.6 s each time. This driver keeps one process per Salt generation for a whole test
module and holds any number of named ``MasterEvent``/``MinionEvent`` objects, on any
bus, so a test can fire many events, listen on several buses and compare results
without starting a process each time.

Protocol: the driver prints ``READY`` once Salt is imported; then each line read from
stdin is one JSON request and gets exactly one JSON reply line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "<traceback>"}``. EOF on stdin ends it.

Requests (``name`` identifies an event object)::

    {"op": "open", "name": N, "sock_dir": D, "node": "master"|"minion", "id": ID,
     "listen": bool}                   -> {"ok": true}; with listen, connected to pub
    {"op": "fire", "name": N, "events": [[TAG, DATA], ...]}
                                       -> {"results": [fire_event's return, ...]}
    {"op": "get", "name": N, "count": K, "wait": W, "tag": T, "match_type": M,
     "full": bool}                     -> {"events": [...], "timeout": bool}
                                          (stops at the first get_event that returns None)
    {"op": "sync", "name": N, "tag": T, "attempts": K}
                                       -> {"attempts": n}: fire T until this object's
                                          own subscriber sees it (proves it is subscribed)
    {"op": "close", "name": N}         -> {"ok": true}

Events are printed as ``get_event`` returns them; bytes become ``{"__bytes__": hex}``
both ways (a request may carry bytes in event data that way).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

# salt_side_peer.py sits next to this file (sys.path[0]), and imports Salt in the order Salt
# needs (salt._logging first); its salt.utils.event is the one used here.
import salt_side_peer as salt_peer

salt_event = salt_peer.salt.utils.event

CONNECT_DEADLINE = 20.0


def from_json_object(obj: dict[str, Any]) -> Any:
    """``{"__bytes__": hex}`` back to bytes, so tests can fire msgpack bin values."""
    if list(obj) == ["__bytes__"]:
        return bytes.fromhex(obj["__bytes__"])
    return obj


class Driver:
    def __init__(self) -> None:
        self.events: dict[str, Any] = {}

    def op_open(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["name"]
        if name in self.events:
            self.events.pop(name).destroy()
        node = req.get("node", "master")
        opts = salt_peer.node_opts(node, req["sock_dir"], req.get("id"))
        listen = bool(req.get("listen", False))
        if node == "master":
            event = salt_event.MasterEvent(req["sock_dir"], opts=opts, listen=listen)
        else:
            event = salt_event.MinionEvent(opts, listen=listen)
        self.events[name] = event
        if listen:
            deadline = time.monotonic() + CONNECT_DEADLINE
            while not salt_peer.subscriber_connected(event):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not connect to the publish socket in {req}")
                if event.cpub:
                    event.close_pub()
                event.connect_pub(timeout=1)
                if not salt_peer.subscriber_connected(event):
                    time.sleep(0.1)
        return {}

    def op_fire(self, req: dict[str, Any]) -> dict[str, Any]:
        event = self.events[req["name"]]
        # fire_event adds _stamp to the dict it is given: each gets its own.
        results = [event.fire_event(dict(data), tag) for tag, data in req["events"]]
        return {"results": results}

    def op_get(self, req: dict[str, Any]) -> dict[str, Any]:
        event = self.events[req["name"]]
        got: list[Any] = []
        for _ in range(int(req.get("count", 1))):
            ret = event.get_event(
                wait=req.get("wait", 5),
                tag=req.get("tag", ""),
                full=bool(req.get("full", True)),
                match_type=req.get("match_type"),
            )
            if ret is None:
                return {"events": got, "timeout": True}
            got.append(ret)
        return {"events": got, "timeout": False}

    def op_sync(self, req: dict[str, Any]) -> dict[str, Any]:
        event = self.events[req["name"]]
        attempts = int(req.get("attempts", 10))
        for attempt in range(1, attempts + 1):
            tag = f"{req['tag']}/{attempt}"
            event.fire_event({"sync": attempt}, tag)
            if event.get_event(wait=1, tag=tag, full=True) is not None:
                return {"attempts": attempt}
        raise RuntimeError(f"no sync event came back after {attempts} attempts")

    def op_close(self, req: dict[str, Any]) -> dict[str, Any]:
        event = self.events.pop(req["name"], None)
        if event is not None:
            event.destroy()
        return {}

    def handle(self, line: str) -> str:
        try:
            req = json.loads(line, object_hook=from_json_object)
            reply = getattr(self, "op_" + req["op"])(req)
            reply["ok"] = True
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        return salt_peer.to_json(reply)

    def close(self) -> None:
        for event in self.events.values():
            event.destroy()
        self.events.clear()


def main() -> int:
    salt_peer.setup_salt_logging(salt_peer.node_opts("master", "/nonexistent", None))
    driver = Driver()
    print("READY", flush=True)
    try:
        for line in sys.stdin:
            if line.strip():
                print(driver.handle(line), flush=True)
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
