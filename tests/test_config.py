"""Tests of saltbus.config: sources and their order, validation, socket addresses.

Every load passes ``env={}`` (or an explicit mapping) so the machine's
environment cannot leak in; files live under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from saltbus.config import UNIX_PATH_MAX, Config, default_sock_dir
from saltbus.errors import ConfigError
from saltbus.event import MatchType
from saltbus.wire import GENERATIONS, Framing

# A real Salt master config, trimmed: most keys are Salt's and unknown to saltbus.
SALT_MASTER_CONFIG = """\
# /etc/salt/master
interface: 0.0.0.0
publish_port: 4505
ret_port: 4506
user: salt
file_roots:
  base:
    - /srv/salt
    - /srv/formulas
pillar_roots:
  base:
    - /srv/pillar
reactor:
  - 'salt/minion/*/start':
    - /srv/reactor/start.sls
event_return: pgjsonb
hash_type: sha256
ipc_mode: tcp
tcp_master_pub_port: 5512
tcp_master_pull_port: 5513
max_event_size: 2097152
event_match_type: fnmatch
salt_version: 3006
"""


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    return 4242


def write(tmp_path: Path, text: str, name: str = "master") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def expected_prefix(ident: str, hash_type: str = "sha256") -> str:
    return "minion_event_" + hashlib.new(hash_type, ident.encode()).hexdigest()[:10]


# -- defaults --------------------------------------------------------------------


def test_defaults(as_root: None) -> None:
    config = Config.load(env={})
    assert config.sock_dir == Path("/var/run/salt/master")
    assert config.node == "master"
    assert config.id is None
    assert config.hash_id is None
    assert config.hash_type == "sha256"
    assert config.ipc_mode == "ipc"
    assert (
        config.tcp_master_pub_port,
        config.tcp_master_pull_port,
        config.tcp_pub_port,
        config.tcp_pull_port,
    ) == (4512, 4513, 4510, 4511)
    assert config.max_event_size == 1_048_576
    assert config.event_match_type is MatchType.STARTSWITH
    assert config.salt_version == "3007"
    assert config.generation is GENERATIONS["3007"]
    assert config.generation.pull_framing is Framing.BARE
    assert config.max_frame_size > config.max_event_size
    assert config.subscriber_queue_events > 0
    assert config.subscriber_queue_bytes > 0


def test_defaults_minion_as_root(as_root: None) -> None:
    config = Config.load(env={}, overrides={"node": "minion", "id": "m1"})
    assert config.sock_dir == Path("/var/run/salt/minion")


def test_config_is_frozen(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node = "minion"  # type: ignore[misc]


# -- YAML file -------------------------------------------------------------------


def test_salt_master_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, SALT_MASTER_CONFIG + f"sock_dir: {tmp_path / 'run'}\n")
    config = Config.load(path, env={})
    assert config.sock_dir == tmp_path / "run"
    assert config.ipc_mode == "tcp"
    assert config.tcp_master_pub_port == 5512
    assert config.tcp_master_pull_port == 5513
    assert config.max_event_size == 2_097_152
    assert config.event_match_type is MatchType.FNMATCH
    assert config.salt_version == "3006"
    assert config.generation.pub_framing is Framing.LENGTH_PREFIXED
    assert config.pub_address == ("127.0.0.1", 5512)
    assert not hasattr(config, "interface")


def test_config_file_as_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, f"sock_dir: {tmp_path}\nnode: minion\nid: web1\n")
    config = Config.load(str(path), env={})
    assert (config.node, config.id) == ("minion", "web1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("salt_version: 3006", "3006"),  # YAML int
        ("salt_version: '3006.30'", "3006"),
        ("salt_version: 3006.30", "3006"),  # YAML float 3006.3
        ("salt_version: '3007.8'", "3007"),
        ("salt_version: 3008.5", "3008"),
        ("salt_version: '3008'", "3008"),
    ],
)
def test_salt_version_in_file(tmp_path: Path, text: str, expected: str) -> None:
    config = Config.load(write(tmp_path, f"sock_dir: {tmp_path}\n{text}\n"), env={})
    assert config.salt_version == expected
    assert config.generation is GENERATIONS[expected]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = Config.load(write(tmp_path, "# nothing\n"), env={}, overrides={"sock_dir": tmp_path})
    assert config == Config.load(env={}, overrides={"sock_dir": tmp_path})


def test_numeric_id_in_file_is_a_str(tmp_path: Path) -> None:
    config = Config.load(write(tmp_path, f"sock_dir: {tmp_path}\nnode: minion\nid: 1234\n"), env={})
    assert config.id == "1234"
    assert config.socket_prefix == expected_prefix("1234")


def test_null_values_in_file_are_unset(tmp_path: Path, as_root: None) -> None:
    # "id:" with no value, as in Salt's commented-out template, means "not set".
    path = write(tmp_path, "id:\nhash_id:\nsock_dir:\nevent_match_type:\nsalt_version: 3007\n")
    config = Config.load(path, env={})
    assert config.id is None
    assert config.hash_id is None
    assert config.sock_dir == Path("/var/run/salt/master")
    assert config.event_match_type is MatchType.STARTSWITH
    with pytest.raises(ConfigError, match="id"):
        Config.load(path, env={}, overrides={"node": "minion"})


def test_sock_dir_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = Config.load(write(tmp_path, "sock_dir: ~/run\n"), env={})
    assert config.sock_dir == tmp_path / "run"


# -- environment and overrides ----------------------------------------------------


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"sock_dir: {tmp_path / 'file'}\ntcp_pub_port: 1000\nnode: master\n")
    env = {
        "SALTBUS_SOCK_DIR": str(tmp_path / "env"),
        "SALTBUS_TCP_PUB_PORT": "2000",
        "SALTBUS_NODE": "minion",
        "SALTBUS_ID": "env-minion",
        "SALTBUS_EVENT_MATCH_TYPE": "regex",
        "SALTBUS_SALT_VERSION": "3008.5",
        "SALTBUS_MAX_EVENT_SIZE": "4096",
        "SALTBUS_IPC_MODE": "tcp",
    }
    config = Config.load(path, env=env)
    assert config.sock_dir == tmp_path / "env"
    assert config.tcp_pub_port == 2000
    assert config.node == "minion"
    assert config.id == "env-minion"
    assert config.event_match_type is MatchType.REGEX
    assert config.salt_version == "3008"
    assert config.max_event_size == 4096
    assert config.pub_address == ("127.0.0.1", 2000)


def test_env_ignores_empty_and_unprefixed_variables(tmp_path: Path) -> None:
    path = write(tmp_path, f"sock_dir: {tmp_path}\ntcp_pub_port: 1000\n")
    env = {"SALTBUS_TCP_PUB_PORT": "", "TCP_PUB_PORT": "9", "SALTBUS_BOGUS": "x", "sock_dir": "/"}
    config = Config.load(path, env=env)
    assert config.tcp_pub_port == 1000
    assert config.sock_dir == tmp_path


def test_env_default_is_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALTBUS_SOCK_DIR", str(tmp_path / "from-environ"))
    assert Config.load().sock_dir == tmp_path / "from-environ"
    assert Config.load(env={}).sock_dir != tmp_path / "from-environ"


def test_overrides_override_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"sock_dir: {tmp_path / 'file'}\ntcp_pub_port: 1000\n")
    env = {"SALTBUS_SOCK_DIR": str(tmp_path / "env"), "SALTBUS_TCP_PUB_PORT": "2000"}
    config = Config.load(
        path, env=env, overrides={"sock_dir": str(tmp_path / "cli"), "tcp_pub_port": 3000}
    )
    assert config.sock_dir == tmp_path / "cli"
    assert config.tcp_pub_port == 3000


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, f"sock_dir: {tmp_path / 'file'}\ntcp_pub_port: 1000\n")
    env = {"SALTBUS_TCP_PUB_PORT": "2000"}
    config = Config.load(
        path,
        env=env,
        overrides={"sock_dir": None, "tcp_pub_port": None, "id": None, "event_match_type": None},
    )
    assert config.sock_dir == tmp_path / "file"
    assert config.tcp_pub_port == 2000
    assert config.id is None


def test_overrides_convert_types(tmp_path: Path) -> None:
    config = Config.load(
        env={},
        overrides={
            "sock_dir": str(tmp_path),
            "tcp_pub_port": "4000",
            "event_match_type": "endswith",
            "salt_version": 3006,
            "id": 7,
        },
    )
    assert config.sock_dir == tmp_path
    assert config.tcp_pub_port == 4000
    assert config.event_match_type is MatchType.ENDSWITH
    assert config.salt_version == "3006"
    assert config.id == "7"


def test_replace(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path})
    changed = config.replace(tcp_pub_port="5000", salt_version="3008.5")
    assert changed.tcp_pub_port == 5000
    assert changed.salt_version == "3008"
    assert changed.sock_dir == tmp_path
    assert config.tcp_pub_port == 4510  # the original is untouched
    assert config.replace() == config
    assert config.replace(tcp_pub_port=None) == config


def test_replace_keeps_unset_ids_unset(tmp_path: Path) -> None:
    minion = Config.load(env={}, overrides={"sock_dir": tmp_path, "node": "minion", "id": "m1"})
    again = minion.replace(max_event_size=4096)
    assert again.id == "m1"
    assert again.hash_id is None
    assert again.pub_address == minion.pub_address
    master = Config.load(env={}, overrides={"sock_dir": tmp_path})
    assert master.replace(ipc_mode="tcp").id is None


def test_replace_validates(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path})
    with pytest.raises(ConfigError, match="unknown setting"):
        config.replace(bogus=1)
    with pytest.raises(ConfigError, match="id"):
        config.replace(node="minion")


# -- errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        Config.load(path, env={})
    assert str(path) in str(info.value)


def test_directory_as_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path, env={})


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "master"
    path.write_bytes(b"id: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert str(path) in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "sock_dir: [1, 2\nnode: master\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        Config.load(path, env={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")]
)
def test_yaml_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"must hold a mapping, not {kind}"):
        Config.load(write(tmp_path, text), env={})


@pytest.mark.parametrize("node", ["server", "Master", "", 1])
def test_bad_node(tmp_path: Path, node: object) -> None:
    with pytest.raises(ConfigError, match="node must be 'master' or 'minion'"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "node": node})


def test_bad_node_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node"):
        Config.load(env={"SALTBUS_NODE": "syndic", "SALTBUS_SOCK_DIR": str(tmp_path)})


def test_bad_ipc_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ipc_mode"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "ipc_mode": "zmq"})


def test_minion_without_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="minion bus needs an id"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "node": "minion"})
    with pytest.raises(ConfigError, match="minion bus needs an id"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "node": "minion", "id": ""})


def test_minion_with_hash_id_only(tmp_path: Path) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path, "node": "minion", "hash_id": "hid"}
    )
    assert config.socket_prefix == expected_prefix("hid")


@pytest.mark.parametrize("value", ["abc", "1.5e3", "", [1], {"a": 1}, True, False])
@pytest.mark.parametrize("name", ["max_event_size", "tcp_pub_port", "subscriber_queue_events"])
def test_bad_int(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be an integer"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, name: value})


def test_bad_int_in_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tcp_master_pub_port must be an integer, not 'x'"):
        Config.load(env={"SALTBUS_TCP_MASTER_PUB_PORT": "x", "SALTBUS_SOCK_DIR": str(tmp_path)})


@pytest.mark.parametrize("port", [-1, 65536, 100_000])
@pytest.mark.parametrize(
    "name", ["tcp_master_pub_port", "tcp_master_pull_port", "tcp_pub_port", "tcp_pull_port"]
)
def test_bad_port(tmp_path: Path, name: str, port: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be a TCP port, not {port}"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, name: port})


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_bounds_accepted(tmp_path: Path, port: int) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path, "tcp_master_pull_port": port})
    assert config.tcp_master_pull_port == port


@pytest.mark.parametrize(
    "name", ["max_event_size", "subscriber_queue_events", "subscriber_queue_bytes"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes(tmp_path: Path, name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be positive"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, name: value})


@pytest.mark.parametrize("version", ["2019.2", "3005", 3009, "latest", "", "30071"])
def test_unknown_salt_version(tmp_path: Path, version: object) -> None:
    with pytest.raises(ConfigError, match="salt_version must be one of 3006, 3007, 3008"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "salt_version": version})


@pytest.mark.parametrize("hash_type", ["sha999", "SHA-256x", "", "shake_128", 256, ["md5"]])
def test_unknown_hash_type(tmp_path: Path, hash_type: object) -> None:
    with pytest.raises(ConfigError, match="hash_type"):
        Config.load(
            env={},
            overrides={"sock_dir": tmp_path, "node": "minion", "id": "m", "hash_type": hash_type},
        )


def test_unknown_match_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown match type 'glob'"):
        Config.load(env={"SALTBUS_EVENT_MATCH_TYPE": "glob", "SALTBUS_SOCK_DIR": str(tmp_path)})


def test_unknown_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'interface'"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "interface": "0.0.0.0"})


# -- socket addresses ---------------------------------------------------------------


def test_master_socket_paths(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path})
    assert config.socket_prefix == "master_event"
    assert config.pub_address == tmp_path / "master_event_pub.ipc"
    assert config.pull_address == tmp_path / "master_event_pull.ipc"


def test_master_ignores_id(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path, "id": "master-1"})
    assert config.pub_address == tmp_path / "master_event_pub.ipc"


@pytest.mark.parametrize("minion_id", ["m1", "web01.example.com", "ünïcode", "1234"])
def test_minion_socket_paths(tmp_path: Path, minion_id: str) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path, "node": "minion", "id": minion_id}
    )
    digest = hashlib.sha256(minion_id.encode("utf-8")).hexdigest()[:10]
    assert config.pub_address == tmp_path / f"minion_event_{digest}_pub.ipc"
    assert config.pull_address == tmp_path / f"minion_event_{digest}_pull.ipc"


def test_minion_socket_paths_known_value(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path, "node": "minion", "id": "m1"})
    assert hashlib.sha256(b"m1").hexdigest().startswith("ca0df2c95a")
    assert config.pub_address == tmp_path / "minion_event_ca0df2c95a_pub.ipc"


@pytest.mark.parametrize("hash_type", ["md5", "sha1", "sha512"])
def test_minion_socket_paths_other_hash_type(tmp_path: Path, hash_type: str) -> None:
    config = Config.load(
        env={},
        overrides={"sock_dir": tmp_path, "node": "minion", "id": "m1", "hash_type": hash_type},
    )
    digest = hashlib.new(hash_type, b"m1").hexdigest()[:10]
    assert config.pub_address == tmp_path / f"minion_event_{digest}_pub.ipc"
    assert config.pull_address == tmp_path / f"minion_event_{digest}_pull.ipc"
    assert digest != hashlib.sha256(b"m1").hexdigest()[:10]


def test_minion_hash_id_wins_over_id(tmp_path: Path) -> None:
    config = Config.load(
        env={},
        overrides={"sock_dir": tmp_path, "node": "minion", "id": "m1", "hash_id": "other"},
    )
    digest = hashlib.sha256(b"other").hexdigest()[:10]
    assert config.pub_address == tmp_path / f"minion_event_{digest}_pub.ipc"
    assert config.pull_address == tmp_path / f"minion_event_{digest}_pull.ipc"


def test_minion_from_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "node: minion\nid: file-id\nhash_type: md5\n", name="minion")
    config = Config.load(path, env={"SALTBUS_SOCK_DIR": str(tmp_path)})
    digest = hashlib.md5(b"file-id").hexdigest()[:10]
    assert config.pub_address == tmp_path / f"minion_event_{digest}_pub.ipc"


def test_tcp_addresses_master(tmp_path: Path) -> None:
    config = Config.load(env={}, overrides={"sock_dir": tmp_path, "ipc_mode": "tcp"})
    assert config.pub_address == ("127.0.0.1", 4512)
    assert config.pull_address == ("127.0.0.1", 4513)


def test_tcp_addresses_minion(tmp_path: Path) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path, "ipc_mode": "tcp", "node": "minion", "id": "m"}
    )
    assert config.pub_address == ("127.0.0.1", 4510)
    assert config.pull_address == ("127.0.0.1", 4511)


def test_tcp_addresses_follow_port_settings(tmp_path: Path) -> None:
    env = {
        "SALTBUS_IPC_MODE": "tcp",
        "SALTBUS_TCP_MASTER_PUB_PORT": "6001",
        "SALTBUS_TCP_MASTER_PULL_PORT": "6002",
        "SALTBUS_SOCK_DIR": str(tmp_path),
    }
    config = Config.load(env=env)
    assert (config.pub_address, config.pull_address) == (("127.0.0.1", 6001), ("127.0.0.1", 6002))
    # A very long sock_dir does not matter over TCP.
    assert Config.load(env=env, overrides={"sock_dir": "/" + "d" * 300}).pub_address == (
        "127.0.0.1",
        6001,
    )


def test_socket_path_length_limit() -> None:
    assert UNIX_PATH_MAX == 107
    # "/" + 85 chars + "/master_event_pub.ipc" is exactly 107 bytes; pull is one more.
    sock_dir = "/" + "d" * 85
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})
    pub = config.pub_address
    assert isinstance(pub, Path)
    assert len(os.fsencode(pub)) == 107
    with pytest.raises(ConfigError, match="108 bytes, over the 107-byte limit") as info:
        _ = config.pull_address
    assert "master_event_pull.ipc" in str(info.value)


def test_socket_path_limit_counts_bytes_not_chars() -> None:
    sock_dir = "/" + "é" * 50  # 101 bytes, 51 characters
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})
    with pytest.raises(ConfigError, match="sock_dir"):
        _ = config.pub_address


def test_long_minion_socket_path(tmp_path: Path) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path / ("x" * 120), "node": "minion", "id": "m"}
    )
    with pytest.raises(ConfigError, match="107-byte limit"):
        _ = config.pub_address


# -- default sock_dir -----------------------------------------------------------------


def test_default_sock_dir_as_root(as_root: None) -> None:
    assert default_sock_dir() == Path("/var/run/salt/master")
    assert default_sock_dir("master") == Path("/var/run/salt/master")
    assert default_sock_dir("minion") == Path("/var/run/salt/minion")


def test_default_sock_dir_as_user_with_xdg(
    as_user: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_sock_dir("master") == tmp_path / "saltbus"
    assert default_sock_dir("minion") == tmp_path / "saltbus"


def test_default_sock_dir_as_user_without_xdg(
    as_user: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_sock_dir("master") == Path(f"/tmp/saltbus-{as_user}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert default_sock_dir("master") == Path(f"/tmp/saltbus-{as_user}")


def test_load_default_sock_dir_uses_the_env_given(
    as_user: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "machine"))
    config = Config.load(env={"XDG_RUNTIME_DIR": str(tmp_path / "given")})
    assert config.sock_dir == tmp_path / "given" / "saltbus"
    # env={} shuts the machine's environment out entirely.
    assert Config.load(env={}).sock_dir == Path(f"/tmp/saltbus-{as_user}")
    # No env: the process environment.
    assert Config.load().sock_dir == tmp_path / "machine" / "saltbus"


def test_explicit_sock_dir_wins_over_default(as_user: int, tmp_path: Path) -> None:
    config = Config.load(env={"XDG_RUNTIME_DIR": "/elsewhere"}, overrides={"sock_dir": tmp_path})
    assert config.sock_dir == tmp_path


def test_generation_follows_salt_version(tmp_path: Path) -> None:
    for version, generation in GENERATIONS.items():
        config = Config.load(env={}, overrides={"sock_dir": tmp_path, "salt_version": version})
        assert config.generation is generation


def test_every_setting_has_an_env_variable(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "sock_dir": str(tmp_path),
        "node": "minion",
        "id": "i",
        "hash_id": "h",
        "hash_type": "md5",
        "ipc_mode": "tcp",
        "tcp_master_pub_port": "1",
        "tcp_master_pull_port": "2",
        "tcp_pub_port": "3",
        "tcp_pull_port": "4",
        "max_event_size": "5",
        "event_match_type": "find",
        "salt_version": "3006",
        "subscriber_queue_events": "6",
        "subscriber_queue_bytes": "7",
    }
    assert set(values) <= {f.name for f in dataclasses.fields(Config)}
    config = Config.load(env={f"SALTBUS_{k.upper()}": v for k, v in values.items()})
    loaded = {name: getattr(config, name) for name in values}
    assert loaded == {
        **values,
        "sock_dir": tmp_path,
        "tcp_master_pub_port": 1,
        "tcp_master_pull_port": 2,
        "tcp_pub_port": 3,
        "tcp_pull_port": 4,
        "max_event_size": 5,
        "event_match_type": MatchType.FIND,
        "subscriber_queue_events": 6,
        "subscriber_queue_bytes": 7,
    }


def test_a_salt_daemons_config_lends_its_log_level_but_not_its_log_file(tmp_path: Path) -> None:
    """saltbus may be pointed at Salt's own master config: it must not write
    its log into Salt's log file; a saltbus config's log_file is used."""
    salt_master = tmp_path / "master"
    salt_master.write_text(
        "interface: 127.0.0.1\nlog_level: warning\nlog_file: /var/log/salt/master\n"
    )
    config = Config.load(salt_master, env={})
    assert config.log_level == "warning" and config.log_file is None
    own = tmp_path / "saltbus.yaml"
    own.write_text(f"log_file: {tmp_path / 'saltbus.log'}\n")
    assert Config.load(own, env={}).log_file == tmp_path / "saltbus.log"
