"""Logging (saltbus.cli.logs): --log-level and --log-format before or after the
command, Salt's log_level and log_file from the config file, JSON lines.

The daemon's own start and stop lines at debug level ("saltbus publisher
... serving", "... stopped; last seq N", from saltbus.server) are what the
real ``saltbus serve`` processes here are expected to log, or not.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from saltbus.cli.logs import JsonFormatter, LogSettings, settings
from saltbus.cli.main import build_parser
from saltbus.config import Config
from saltbus.errors import ConfigError
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env

WAIT = 10.0
STOPPED = "saltbus publisher stopped; last seq"


def serve_log(config: Config, *args: str, before: tuple[str, ...] = ()) -> str:
    """What ``saltbus [before] serve --sock-dir ... [args]`` logs from start to stop."""
    if before:
        # ServeProcess puts its arguments after `serve`: run the command by hand here.
        proc = subprocess.Popen(
            [os.fspath(SALTBUS), *before, "serve", *bus_flags(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # until it serves
                if "Ctrl-C to stop" in line:
                    break
            proc.terminate()
            rest, _ = proc.communicate(timeout=WAIT)
            assert proc.returncode == 0, rest
            return rest
        finally:
            proc.kill()
            proc.wait(WAIT)
    with ServeProcess.for_bus(config, *args) as serve:
        serve.stop(WAIT)
        return serve.log


def test_log_level_is_accepted_after_the_command(bus_config: Config) -> None:
    assert f"saltbus: DEBUG: {STOPPED} 0" in serve_log(bus_config, "--log-level", "debug")


def test_log_level_before_the_command_still_works_and_after_it_wins(bus_config: Config) -> None:
    assert STOPPED in serve_log(bus_config, before=("--log-level", "debug"))
    quiet = serve_log(bus_config, "--log-level", "info", before=("--log-level", "debug"))
    assert STOPPED not in quiet
    assert "saltbus: stopped at seq 0" in quiet  # what it prints whatever the level


def test_json_lines_carry_time_level_logger_and_message(bus_config: Config) -> None:
    log = serve_log(bus_config, "--log-level", "debug", "--log-format", "json")
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    stopped = [r for r in records if r["message"].startswith(STOPPED)]
    assert len(stopped) == 1, log
    assert stopped[0]["level"] == "debug"
    assert stopped[0]["logger"] == "saltbus.server"
    assert stopped[0]["time"].endswith("+00:00")


def test_salt_log_level_and_log_file_come_from_the_config_file(
    bus_config: Config, tmp_path: Path
) -> None:
    log_file = tmp_path / "serve.log"
    conf = tmp_path / "master"
    # Salt's own level names: trace is finer than debug, and logs debug here.
    conf.write_text(f"log_level: trace\nlog_file: {log_file}\nlog_format: text\n")
    printed = serve_log(bus_config, "--config", os.fspath(conf))
    written = log_file.read_text()
    assert f"saltbus: DEBUG: {STOPPED} 0" in written
    assert STOPPED not in printed  # the records went to the file, not to stderr
    # The file's lines carry their time: nothing else stamps them.
    assert written.splitlines()[0][:4].isdigit(), written


def test_the_flag_wins_over_the_config_file(bus_config: Config, tmp_path: Path) -> None:
    conf = tmp_path / "serve.yaml"
    conf.write_text("log_level: quiet\n")
    assert STOPPED not in serve_log(bus_config, "--config", os.fspath(conf))
    assert STOPPED in serve_log(bus_config, "--config", os.fspath(conf), "--log-level", "debug")


def test_an_unwritable_log_file_is_one_line_naming_it(bus_config: Config, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "saltbus.log"
    conf = tmp_path / "serve.yaml"
    conf.write_text(f"log_file: {missing}\n")
    done = subprocess.run(
        [os.fspath(SALTBUS), "serve", "--config", os.fspath(conf), *bus_flags(bus_config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_log_level_in_the_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="log_level must be one of"):
        Config.load(env={}, overrides={"sock_dir": "/tmp/x", "log_level": "loud"})
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        Config.load(env={}, overrides={"sock_dir": "/tmp/x", "log_format": "xml"})


def test_the_config_is_read_from_salt_names_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "master"
    conf.write_text("log_level: WARNING\nlog_file: ~/saltbus.log\n")
    config = Config.load(conf, env={"SALTBUS_LOG_FORMAT": "json"})
    assert (config.log_level, config.log_format) == ("warning", "json")
    assert config.log_file == Path("~/saltbus.log").expanduser()


def test_flags_win_over_the_config_and_absent_flags_leave_it() -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": "/tmp/x", "log_level": "error", "log_format": "json"}
    )
    given = build_parser().parse_args(["listen", "--log-level", "DEBUG"])
    assert settings(given, config) == LogSettings("debug", "json", None)
    absent = build_parser().parse_args(["listen"])
    assert settings(absent, config) == LogSettings("error", "json", None)
    assert settings(absent, None) == LogSettings("info", "text", None)


def test_a_json_line_carries_the_event_tag_and_seq_given_as_extra() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("saltbus.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("returner %s failed", "pg", extra={"tag": "salt/job/1/ret/web1", "seq": 42})
        log.warning("no event here")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("with a traceback")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "returner pg failed"
    assert (first["tag"], first["seq"], first["level"]) == ("salt/job/1/ret/web1", 42, "warning")
    assert "tag" not in second and "seq" not in second
    assert "ValueError: boom" in third["exception"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "token", "list", "--tokens", "t", "--log-format", "json"],
        ["token", "list", "--tokens", "t", "--log-level", "debug", "--log-format", "json"],
        ["--log-format", "text", "fire", "a/b", "--log-format", "json", "--log-level", "debug"],
    ],
)
def test_every_command_and_action_takes_the_options_after_it(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == ("debug", "json")
