"""Salt 3007's own clients in the soak, run as a script by Salt's python
(it imports Salt and the standard library only, never saltbus):

    salt_peer.py listen SOCK_DIR OUT        Salt's MasterEvent, every soak/ event
                                            as a JSON line {"tag", "data"}
    salt_peer.py fire SOCK_DIR NODE RATE OUT   fire_event at RATE/s, each outcome
                                            a line "T|F <id> <time>"

Both run until SIGTERM and write each line as it comes.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _event_module(sock_dir: str) -> tuple[Any, dict[str, Any]]:
    import salt._logging  # type: ignore[import-not-found]  # noqa: PLC0415
    import salt.config  # type: ignore[import-not-found]  # noqa: PLC0415
    import salt.utils.event  # type: ignore[import-not-found]  # noqa: PLC0415

    opts = salt.config.DEFAULT_MASTER_OPTS.copy()
    opts.update(sock_dir=sock_dir, ipc_mode="ipc", id="saltbus-soak_master")
    log_opts = dict(opts, log_level="warning")
    log_opts.update(configure_file_logger=False, configure_ext_handlers=False)
    salt._logging.set_logging_options_dict(log_opts)
    salt._logging.setup_logging()
    return salt.utils.event, opts


def listen(sock_dir: str, out_path: str) -> None:
    events, opts = _event_module(sock_dir)
    bus = events.MasterEvent(sock_dir, opts=opts, listen=True)
    with open(out_path, "a", buffering=1, encoding="utf-8") as out:
        while True:
            ret = bus.get_event(wait=30, tag="soak/", full=True)
            if ret is not None:
                out.write(json.dumps({"tag": ret["tag"], "data": ret["data"]}) + "\n")


def fire(sock_dir: str, node: str, rate: float, out_path: str) -> None:
    events, opts = _event_module(sock_dir)
    bus = events.MasterEvent(sock_dir, opts=opts, listen=False)
    n = 0
    with open(out_path, "a", buffering=1, encoding="utf-8") as out:
        while True:
            n += 1
            event_id = f"salt{node}-{n}"
            try:
                ok = bool(bus.fire_event({"id": event_id}, f"soak/salt/{node}", timeout=1000))
            except Exception:  # Salt raises what its transport raised: counted as not fired
                ok = False
            out.write(f"{'T' if ok else 'F'} {event_id} {time.time():.3f}\n")
            time.sleep(1.0 / rate)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        if argv[0] == "listen":
            listen(argv[1], argv[2])
        elif argv[0] == "fire":
            fire(argv[1], argv[2], float(argv[3]), argv[4])
        else:
            print(f"unknown role {argv[0]!r}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
