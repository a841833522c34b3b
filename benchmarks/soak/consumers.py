"""SSE clients of the HTTP bridge, each a thread that records every event it
gets (``seq id`` a line, appended as it comes) and, when the stream breaks,
reconnects with ``Last-Event-ID``: the last seq it recorded."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

RECONNECT = 0.5
READ_TIMEOUT = 10.0  # the bridge sends a heartbeat every 2 s: silence this long is a dead stream


class SseClient:
    def __init__(self, name: str, port: int, tag: str, out: Path) -> None:
        self.name = name
        self.port = port
        self.tag = tag
        self.out = out
        self.last_id: str | None = None
        self.connects = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sse-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(READ_TIMEOUT + 5)

    def _run(self) -> None:
        with self.out.open("a", buffering=1) as out:
            while not self._stop.is_set():
                try:
                    self._stream(out)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    self.errors.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                self._stop.wait(RECONNECT)

    def _stream(self, out: TextIO) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT)
        try:
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            conn.request("GET", f"/events?tag={quote(self.tag)}", headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}: {response.read(200)!r}")
            self.connects += 1
            event_id: str | None = None
            data: list[str] = []
            while not self._stop.is_set():
                raw = response.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    body = json.loads("\n".join(data))
                    payload = body.get("data") or {}
                    if isinstance(payload, dict) and "id" in payload:
                        out.write(f"{event_id} {payload['id']}\n")
                    if event_id is not None:
                        self.last_id = event_id
                    event_id, data = None, []
        finally:
            conn.close()
