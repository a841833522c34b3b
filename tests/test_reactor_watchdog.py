"""The reactor's subscription watchdog (reactor/watchdog.py), against real
processes: `saltbus serve` stopped with SIGSTOP for longer than the
watchdog's period stalls the subscription; the reactor must say so, drop and
reopen its connection, and react to what was fired meanwhile and after."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from saltbus import Config, Listener, Sender
from saltbus.reactor.watchdog import PROBE_TAG
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until

WAIT = 30.0
PERIOD = 1.0  # reactor_watchdog: seconds of silence before a probe


def start_react(config: Config, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    (tmp_path / "done.sls").write_text(
        "done:\n  event.send:\n    - tag: wd/done\n    - data: {n: \"{{ data['n'] }}\"}\n"
    )
    conf = tmp_path / "reactor.conf"
    conf.write_text(
        f"reactor_watchdog: {PERIOD}\nreactor:\n  - 'wd/go':\n    - {tmp_path / 'done.sls'}\n"
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [os.fspath(SALTBUS), "react", "--config", str(conf), *bus_flags(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=clean_env(),
        )
    wait_until(
        lambda: "running on the" in log.read_text() or proc.poll() is not None,
        "the reactor to run",
        WAIT,
    )
    assert proc.poll() is None, log.read_text()
    return proc


def done(listener: Listener, n: int) -> None:
    """Until the reaction to ``wd/go`` number ``n`` is seen."""
    wait_until(
        lambda: (e := listener.receive(0.5)) is not None and e.data.get("n") == str(n),
        f"the reaction to wd/go {n}",
        WAIT,
    )


def test_a_stalled_subscription_is_logged_and_reestablished(
    bus_config: Config, tmp_path: Path
) -> None:
    log = tmp_path / "react.log"
    with ServeProcess.for_bus(bus_config) as serve:
        react = start_react(bus_config, tmp_path, log)
        try:
            with Listener(bus_config, "wd/done") as listener, Sender(bus_config) as sender:
                listener.connect(5)
                sender.fire("wd/go", {"n": 1}, ack=True)
                done(listener, 1)
                # Idle: the watchdog probes, and its probe comes back: no warning.
                with Listener(bus_config, PROBE_TAG) as probes:
                    probes.connect(5)
                    assert probes.receive(WAIT) is not None
                assert "silent" not in log.read_text()

                os.kill(serve.pid, signal.SIGSTOP)
                try:
                    sender.fire("wd/go", {"n": 2})  # taken by the socket's buffer
                    wait_until(
                        lambda: "reactor subscription silent" in log.read_text(),
                        "the watchdog to report the silence",
                        WAIT,
                    )
                finally:
                    os.kill(serve.pid, signal.SIGCONT)
                done(listener, 2)
                sender.fire("wd/go", {"n": 3}, ack=True)
                done(listener, 3)
            text = log.read_text()
            assert "re-establishing it" in text
            assert react.poll() is None, text
        finally:
            react.send_signal(signal.SIGTERM)
            assert react.wait(WAIT) == 0, log.read_text()
