"""The cluster: section: in the config file, the environment and the flags of
`saltbus serve`, and what saltbus.cluster.settings makes of it."""

from __future__ import annotations

import argparse
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saltbus.cli import cluster as cli_cluster
from saltbus.cluster import ClusterSettings, TagPattern
from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.event import MatchType


def load(tmp_path: Path, text: str, **env: str) -> Config:
    path = tmp_path / "saltbus.yaml"
    path.write_text(f"sock_dir: {tmp_path / 's'}\n{text}")
    return Config.load(path, env=env)


def test_a_config_file_section_becomes_settings(tmp_path: Path):
    config = load(
        tmp_path,
        """
cluster:
  servers: [nats://10.0.0.1:4222, "nats://10.0.0.2:4222"]
  node_name: web1
  export: [salt/, "fnmatch:app/*/deploy"]
  import: app/
  stream: EVENTS
  replicas: 3
  user: bus
  password: secret
  options: {connect_timeout: 7}
""",
    )
    settings = ClusterSettings.from_config(config)
    assert settings.servers == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222")
    assert settings.node_name == "web1"
    assert settings.export == (
        TagPattern("salt/"),
        TagPattern("app/*/deploy", MatchType.FNMATCH),
    )
    assert settings.import_ == (TagPattern("app/"),)
    assert (settings.stream, settings.replicas) == ("EVENTS", 3)
    kwargs = settings.connect_kwargs()
    assert kwargs["user"] == "bus" and kwargs["password"] == "secret"
    assert kwargs["connect_timeout"] == 7
    assert kwargs["name"] == "saltbus-web1"


def test_defaults_and_the_environment(tmp_path: Path):
    config = load(
        tmp_path,
        "id: minion-7\nnode: minion\n",
        SALTBUS_CLUSTER="{servers: 'nats://a:1,nats://b:2'}",
    )
    settings = ClusterSettings.from_config(config)
    assert settings.servers == ("nats://a:1", "nats://b:2")
    assert settings.node_name == "minion-7"  # the bus's id
    assert (settings.export, settings.import_) == ((), ())
    assert (settings.stream, settings.replicas, settings.subject_prefix) == (
        "SALTBUS",
        1,
        "saltbus.ev",
    )
    assert Config.load(env={}).cluster == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("cluster: [nats://a:1]", "must be a mapping"),
        ("cluster: {servers: nats://a:1, colour: red}", "unknown keys ['colour']"),
        ("cluster: {node_name: x}", "needs servers"),
        ("cluster: {servers: 'http://a:1'}", "nats://HOST:PORT"),
        ("cluster: {servers: nats://a:1, node_name: 'web1.example.com'}", "node_name"),
        ("cluster: {servers: nats://a:1, stream: 'a.b'}", "stream"),
        ("cluster: {servers: nats://a:1, replicas: 7}", "replicas must be between 1 and 5"),
        ("cluster: {servers: nats://a:1, export: 3}", "export must be a tag pattern"),
        ("cluster: {servers: nats://a:1, import: ['regex:(']}", "invalid regex"),
        ("cluster: {servers: nats://a:1, subject_prefix: 'a.>'}", "subject prefix"),
        ("cluster: {servers: nats://a:1, options: {pending_size: 1}}", "cannot set pending_size"),
        ("cluster: {servers: nats://a:1, tls: {ca: x}}", "tls: unknown keys"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, section: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ClusterSettings.from_config(load(tmp_path, section + "\n"))


def test_tls_and_credentials_are_passed_to_nats(tmp_path: Path):
    creds = tmp_path / "bus.creds"
    config = load(
        tmp_path,
        f"cluster: {{servers: tls://a:1, credentials: {creds}, tls: {{hostname: nats.example}}}}\n",
    )
    kwargs = ClusterSettings.from_config(config).connect_kwargs()
    assert kwargs["user_credentials"] == str(creds)
    assert isinstance(kwargs["tls"], ssl.SSLContext)
    assert kwargs["tls_hostname"] == "nats.example"
    bad = load(tmp_path, f"cluster: {{servers: tls://a:1, tls: {{ca_file: {tmp_path / 'no'}}}}}\n")
    with pytest.raises(ConfigError, match="tls"):
        ClusterSettings.from_config(bad).connect_kwargs()


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_cluster.add_options(parser)
    return parser.parse_args(argv)


def test_serve_flags_win_over_the_file_and_are_checked_early(tmp_path: Path):
    config = load(tmp_path, "cluster: {servers: nats://file:1, node_name: filed, stream: S}\n")
    args = serve_args(
        "--cluster", "nats://flag:1,nats://flag:2", "--export", "a/", "--export", "b/",
        "--import", "c/",
    )  # fmt: skip
    settings = ClusterSettings.from_config(cli_cluster.apply_options(config, args))
    assert settings.servers == ("nats://flag:1", "nats://flag:2")
    assert settings.node_name == "filed" and settings.stream == "S"
    assert settings.export == (TagPattern("a/"), TagPattern("b/"))
    assert settings.import_ == (TagPattern("c/"),)
    plain = load(tmp_path, "")
    assert cli_cluster.apply_options(plain, serve_args()).cluster == {}
    with pytest.raises(ConfigError, match="node_name"):
        cli_cluster.apply_options(
            plain, serve_args("--cluster", "nats://a:1", "--node-name", "a b")
        )


def test_stats_lines():
    lines = cli_cluster.describe(
        {
            "node": "web1",
            "state": "linked",
            "connected": "nats://10.0.0.1:4222",
            "stream": "SALTBUS",
            "export": {"patterns": ["(all)"], "exported": 5, "lag": 0, "position": 9},
            "import": {"patterns": ["app/"], "imported": 3, "consumer": {"pending": 2}},
            "last_error": "export: no responders",
        }
    )
    assert lines[0] == "cluster: node web1 linked nats://10.0.0.1:4222 stream SALTBUS"
    assert "exported 5, lag 0 (position 9)" in lines[1]
    assert "imported 3" in lines[2] and "consumer pending 2" in lines[2]
    assert lines[3] == "  last error: export: no responders"
    waiting = cli_cluster.describe(
        {
            "node": "web1",
            "state": "connecting",
            "connected": "nats://10.0.0.1:4222",
            "stream": "SALTBUS",
            "waiting_for": "NATS to answer consumer info SALTBUS web1 (asked 2.0 s ago)",
        }
    )
    assert waiting[0] == (
        "cluster: node web1 connecting nats://10.0.0.1:4222 stream SALTBUS, "
        "waiting for NATS to answer consumer info SALTBUS web1 (asked 2.0 s ago)"
    )


def test_retention_and_import_start_are_read_and_checked(tmp_path: Path):
    def settings(text: str) -> ClusterSettings:
        return ClusterSettings.from_config(
            load(tmp_path, f"cluster:\n  servers: nats://n:1\n{text}")
        )

    defaults = settings("")
    assert (defaults.max_age, defaults.max_bytes) == (7 * 86400.0, 1024**3)
    assert str(defaults.import_start) == "new" and defaults.import_start.start_time() is None
    chosen = settings("  max_age: 12h\n  max_bytes: 5000000\n  import_start: all\n")
    assert (chosen.max_age, chosen.max_bytes) == (43200.0, 5_000_000)
    assert chosen.import_start.mode == "all"
    assert settings("  max_age: 90\n  max_bytes: -1\n").max_age == 90.0
    assert settings("  max_bytes: -1\n").max_bytes == -1

    absolute = settings("  import_start: since 2026-05-01T12:00:00+02:00\n").import_start
    assert absolute.start_time() == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    naive = settings("  import_start: since 2026-05-01T12:00:00\n").import_start
    assert naive.start_time() == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # UTC assumed
    relative = settings("  import_start: since 2h\n").import_start
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert relative.start_time(now) == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)

    for text, message in (
        ("  max_age: soon\n", "max_age must be seconds or a duration"),
        ("  max_age: 0\n", "max_age must be between"),
        ("  max_bytes: 0\n", "max_bytes must be a number of bytes"),
        ("  max_bytes: 1GB\n", "max_bytes must be a number of bytes"),
        ("  import_start: everything\n", "import_start must be new, all or 'since TIME'"),
        ("  import_start: since yesterday\n", "not an ISO 8601 time"),
    ):
        with pytest.raises(ConfigError, match=message):
            settings(text)


def test_stats_lines_show_the_streams_size_and_limits():
    base = {"node": "a", "state": "linked", "export": {}, "import": {}}
    limited = {"messages": 12, "bytes": 6000, "first_seq": 3, "last_seq": 14}
    lines = cli_cluster.describe(
        {**base, "stream_state": {**limited, "max_age": 7200.0, "max_bytes": 1000000}}
    )
    expected = "  stream 12 messages, 6000 bytes (seqs 3-14); keeps 7200 s and 1000000 bytes"
    assert lines[3] == expected
    unlimited = cli_cluster.describe(
        {**base, "stream_state": {**limited, "max_age": 0, "max_bytes": -1}}
    )
    assert unlimited[3].endswith("keeps forever and any size")
    assert len(cli_cluster.describe({**base, "stream_state": {}})) == 3
