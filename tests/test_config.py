"""Config loading: defaults, the repo's example, and an exact, located message for every error."""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hacluster.config import (
    FRAME_OVERHEAD,
    TOKEN_ENV,
    Address,
    ConfigError,
    LimitsConfig,
    ReplicationConfig,
    StorageConfig,
    load_config,
    parse_address,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "file-token-0123456789"
ENV_TOKEN = "env-token-abcdefghijkl"

BASE: dict[str, Any] = {
    "cluster": {"name": "demo", "token": TOKEN, "primary": "n1"},
    "tls": "off",
    "nodes": [
        {"name": "n1", "api": "127.0.0.1:8701", "data_dir": "data/n1"},
        {"name": "n2", "api": "127.0.0.1:8702", "data_dir": "data/n2"},
    ],
}


NO_PRIMARY = ("cluster.primary: required when nodes have no raft addresses (without consensus "
              "the primary is configured)")


def doc() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def write(tmp_path: Path, data: Any, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load(path: Path, env: dict[str, str] | None = None) -> Any:
    return load_config(path, env={} if env is None else env)


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env)
    return str(info.value)


# -- valid configs ---------------------------------------------------------------------------


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, doc())
    cfg = load(path)
    assert cfg.name == "demo"
    assert cfg.token == TOKEN
    assert cfg.primary == "n1"
    assert cfg.epoch == 1
    assert cfg.column_families == ("default",)
    assert cfg.storage == StorageConfig()
    assert cfg.replication == ReplicationConfig(mode="async")  # static: async only
    assert cfg.limits == LimitsConfig()
    assert cfg.source == path
    assert [n.name for n in cfg.nodes] == ["n1", "n2"]
    assert cfg.nodes[0].api == Address("127.0.0.1", 8701)
    assert cfg.nodes[1].api.url == "http://127.0.0.1:8702"
    assert cfg.node("n2") is cfg.nodes[1]


def test_null_value_means_default(tmp_path: Path) -> None:
    data = doc()
    data["cluster"]["epoch"] = None
    data["replication"] = {"heartbeat_interval": None}
    cfg = load(write(tmp_path, data))
    assert cfg.epoch == 1
    assert cfg.replication.heartbeat_interval == ReplicationConfig().heartbeat_interval


def test_repo_cluster_yaml_loads() -> None:
    cfg = load_config(REPO / "cluster.yaml", env={})
    assert cfg.name == "demo"
    assert cfg.column_families[0] == "default"
    assert len(cfg.nodes) == 3
    assert cfg.uses_consensus and cfg.primary == ""  # the example elects its primary
    assert cfg.raft_password is not None and len(cfg.token) >= 16
    for node in cfg.nodes:
        assert node.raft is not None
        assert node.data_dir.is_absolute()
        assert node.data_dir.is_relative_to(REPO)


def test_full_config_values_are_read(tmp_path: Path) -> None:
    data = doc()
    data["cluster"]["epoch"] = 7
    data["column_families"] = ["users", "events"]
    data["storage"] = {"wal_ttl_seconds": 10, "wal_size_limit_mb": 2, "write_buffer_size_mb": 4,
                       "max_total_wal_size_mb": 8, "fsync_writes": True}
    data["replication"] = {"heartbeat_interval": 1, "reconnect_backoff_min": 0.5,
                           "reconnect_backoff_max": 0.5, "fsync_on_apply": True,
                           "max_frame_bytes": 1 << 21, "ack_interval": 0.25,
                           "checkpoint_ttl_seconds": 60, "bootstrap_chunk_bytes": 8192,
                           "bootstrap_max_rate_mb_s": 3}
    data["limits"] = {"max_key_bytes": 100, "max_value_bytes": 0, "max_body_bytes": 1 << 20,
                      "max_batch_ops": 5}
    cfg = load(write(tmp_path, data))
    assert cfg.epoch == 7
    # default is added first when the list does not name it
    assert cfg.column_families == ("default", "users", "events")
    assert cfg.storage == StorageConfig(10, 2, 4, 8, True)
    assert cfg.replication == ReplicationConfig(1.0, 0.5, 0.5, True, 1 << 21, 0.25, 60, 8192, 3.0,
                                                 mode="async")
    # an integer where a number is expected becomes a float
    assert isinstance(cfg.replication.heartbeat_interval, float)
    assert isinstance(cfg.replication.bootstrap_max_rate_mb_s, float)
    assert cfg.limits == LimitsConfig(100, 0, 1 << 20, 5)


def test_column_family_order_is_kept_when_default_listed(tmp_path: Path) -> None:
    data = doc()
    data["column_families"] = ["users", "default", "meta"]
    assert load(write(tmp_path, data)).column_families == ("users", "default", "meta")


def test_ipv6_in_brackets_is_accepted(tmp_path: Path) -> None:
    data = doc()
    data["nodes"][1]["api"] = "[::1]:8702"
    cfg = load(write(tmp_path, data))
    assert cfg.nodes[1].api == Address("::1", 8702)
    assert cfg.nodes[1].api.url == "http://[::1]:8702"


def test_host_name_is_accepted(tmp_path: Path) -> None:
    data = doc()
    data["nodes"][1]["api"] = "db-2.example.com:80"
    assert load(write(tmp_path, data)).nodes[1].api == Address("db-2.example.com", 80)


def test_relative_data_dir_resolves_against_config_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "hac"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = doc()
    data["nodes"][1]["data_dir"] = str(tmp_path / "abs")
    path = write(conf_dir, data)
    monkeypatch.chdir(elsewhere)
    cfg = load(path)
    assert cfg.nodes[0].data_dir == (conf_dir / "data" / "n1").resolve()
    assert cfg.nodes[1].data_dir == tmp_path / "abs"
    # a relative config path gives the same answer
    monkeypatch.chdir(tmp_path)
    assert load(Path("etc/hac/cluster.yaml")).nodes[0].data_dir == cfg.nodes[0].data_dir


def test_tilde_in_data_dir_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = doc()
    data["nodes"][0]["data_dir"] = "~/n1"
    assert load(write(tmp_path, data)).nodes[0].data_dir == tmp_path / "home" / "n1"


# -- the token and the environment -----------------------------------------------------------


def test_env_token_overrides_file_token(tmp_path: Path) -> None:
    path = write(tmp_path, doc())
    assert load(path, {TOKEN_ENV: ENV_TOKEN}).token == ENV_TOKEN


def test_env_token_alone_is_enough(tmp_path: Path) -> None:
    data = doc()
    del data["cluster"]["token"]
    assert load(write(tmp_path, data), {TOKEN_ENV: ENV_TOKEN}).token == ENV_TOKEN


def test_empty_env_token_falls_back_to_file(tmp_path: Path) -> None:
    assert load(write(tmp_path, doc()), {TOKEN_ENV: ""}).token == TOKEN


def test_env_token_is_read_from_os_environ_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, ENV_TOKEN)
    assert load_config(write(tmp_path, doc())).token == ENV_TOKEN
    monkeypatch.delenv(TOKEN_ENV)
    assert load_config(write(tmp_path, doc())).token == TOKEN


def test_short_env_token_is_refused_even_with_good_file_token(tmp_path: Path) -> None:
    path = write(tmp_path, doc())
    assert error_of(path, {TOKEN_ENV: "short"}) == (
        f"{path}: $HACLUSTER_TOKEN: must be at least 16 characters")


def test_no_token_anywhere(tmp_path: Path) -> None:
    data = doc()
    del data["cluster"]["token"]
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: auth.tokens: no credential configured: add role tokens (`hacluster token "
        "new --role ROLE`) or set cluster.token")


def test_token_of_exactly_16_characters_is_enough(tmp_path: Path) -> None:
    data = doc()
    data["cluster"]["token"] = "x" * 16
    assert load(write(tmp_path, data)).token == "x" * 16
    data["cluster"]["token"] = "x" * 15
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: cluster.token: must be at least 16 characters"


# -- errors naming the file and the key ------------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(*keys: Any, value: Any) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for k in keys[:-1]:
            target = target.setdefault(k, {}) if isinstance(target, dict) else target[k]
        target[keys[-1]] = value
    return mutate


def _del(*keys: Any) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return mutate


def _many(*mutators: Mutator) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        for m in mutators:
            m(d)
    return mutate


CASES: list[tuple[str, Mutator, str]] = [
    # unknown keys, at every level
    ("unknown-top", _set("bogus", value=1), "bogus: unknown key"),
    ("unknown-cluster", _set("cluster", "leader", value="n1"), "cluster.leader: unknown key"),
    ("unknown-storage", _set("storage", "fsync", value=True), "storage.fsync: unknown key"),
    ("unknown-replication", _set("replication", "fsync_on_aply", value=True),
     "replication.fsync_on_aply: unknown key (did you mean 'fsync_on_apply'?)"),
    ("unknown-limits", _set("limits", "max_keys", value=1), "limits.max_keys: unknown key"),
    ("unknown-node", _set("nodes", 1, "port", value=1), "nodes[1].port: unknown key"),
    ("unknown-first-sorted", _many(_set("zzz", value=1), _set("aaa", value=1)),
     "aaa: unknown key"),
    # missing required keys
    ("missing-cluster", _del("cluster"), "cluster: required key is missing"),
    ("missing-name", _del("cluster", "name"), "cluster.name: required key is missing"),
    ("missing-primary", _del("cluster", "primary"), NO_PRIMARY),
    ("null-primary", _set("cluster", "primary", value=None), NO_PRIMARY),
    ("missing-nodes", _del("nodes"), "nodes: required key is missing"),
    ("empty-nodes", _set("nodes", value=[]), "nodes: must list at least one node"),
    ("missing-node-name", _del("nodes", 1, "name"), "nodes[1].name: required key is missing"),
    ("missing-node-api", _del("nodes", 1, "api"), "nodes[1].api: required key is missing"),
    ("missing-data-dir", _del("nodes", 0, "data_dir"),
     "nodes[0].data_dir: required key is missing"),
    # a near miss is named, from either side
    ("misspelled-required", _many(_del("nodes", 0, "data_dir"),
                                  _set("nodes", 0, "datadir", value="data/n1")),
     "nodes[0].data_dir: required key is missing (found 'datadir': did you mean 'data_dir'?)"),
    ("misspelled-optional", _set("storage", "fsync_write", value=True),
     "storage.fsync_write: unknown key (did you mean 'fsync_writes'?)"),
    ("far-miss-required", _many(_del("nodes", 1, "api"), _set("nodes", 1, "zzz", value=1)),
     "nodes[1].api: required key is missing"),
    # wrong shapes
    ("cluster-not-map", _set("cluster", value="demo"), "cluster: expected a mapping, got str"),
    ("storage-not-map", _set("storage", value=[1]), "storage: expected a mapping, got list"),
    ("nodes-not-list", _set("nodes", value={"n1": 1}), "nodes: expected a list, got dict"),
    ("node-not-map", _set("nodes", 1, value="n2"),
     "nodes[1]: expected a mapping with name, api, data_dir"),
    ("cfs-not-list", _set("column_families", value="users"),
     "column_families: expected a list, got str"),
    # addresses
    ("port-0", _set("nodes", 1, "api", value="127.0.0.1:0"),
     "nodes[1].api: port must be 1-65535, got 0"),
    ("port-70000", _set("nodes", 1, "api", value="127.0.0.1:70000"),
     "nodes[1].api: port must be 1-65535, got 70000"),
    ("port-abc", _set("nodes", 1, "api", value="127.0.0.1:abc"),
     "nodes[1].api: expected host:port, got '127.0.0.1:abc'"),
    ("no-port", _set("nodes", 1, "api", value="127.0.0.1"),
     "nodes[1].api: expected host:port, got '127.0.0.1'"),
    ("bad-ipv4", _set("nodes", 1, "api", value="300.1.1.1:80"),
     "nodes[1].api: bad IPv4 address '300.1.1.1'"),
    ("bad-ipv6", _set("nodes", 1, "api", value="[1::2::3]:80"),
     "nodes[1].api: bad IPv6 address '1::2::3'"),
    ("ipv6-no-brackets", _set("nodes", 1, "api", value="::1:80"),
     "nodes[1].api: expected host:port, got '::1:80'"),
    ("bad-host", _set("nodes", 1, "api", value="db_2:80"),
     "nodes[1].api: bad host name 'db_2'"),
    ("api-not-string", _set("nodes", 1, "api", value=8702),
     "nodes[1].api: expected a string, got int"),
    # types
    ("bool-epoch", _set("cluster", "epoch", value=True),
     "cluster.epoch: expected an integer, got a boolean"),
    ("bool-heartbeat", _set("replication", "heartbeat_interval", value=True),
     "replication.heartbeat_interval: expected a number, got a boolean"),
    ("bool-max-key", _set("limits", "max_key_bytes", value=False),
     "limits.max_key_bytes: expected an integer, got a boolean"),
    ("int-for-bool", _set("storage", "fsync_writes", value=1),
     "storage.fsync_writes: expected true or false, got int"),
    ("float-for-int", _set("storage", "wal_ttl_seconds", value=1.5),
     "storage.wal_ttl_seconds: expected an integer, got float"),
    ("string-for-number", _set("replication", "heartbeat_interval", value="1s"),
     "replication.heartbeat_interval: expected a number, got str"),
    ("token-not-string", _set("cluster", "token", value=12345678901234567890),
     "cluster.token: expected a string, got int"),
    # bounds
    ("epoch-0", _set("cluster", "epoch", value=0), "cluster.epoch: must be at least 1, got 0"),
    ("heartbeat-high", _set("replication", "heartbeat_interval", value=100),
     "replication.heartbeat_interval: must be at least 0.01 and at most 60, got 100.0"),
    ("heartbeat-low", _set("replication", "heartbeat_interval", value=0.001),
     "replication.heartbeat_interval: must be at least 0.01 and at most 60, got 0.001"),
    ("write-buffer-high", _set("storage", "write_buffer_size_mb", value=4097),
     "storage.write_buffer_size_mb: must be at least 1 and at most 4096, got 4097"),
    ("max-frame-low", _set("replication", "max_frame_bytes", value=1000),
     "replication.max_frame_bytes: must be at least 65536 and at most 1073741824, got 1000"),
    ("body-low", _set("limits", "max_body_bytes", value=1023),
     "limits.max_body_bytes: must be at least 1024 and at most 2147483648, got 1023"),
    ("backoff-max-below-min",
     _many(_set("replication", "reconnect_backoff_min", value=2),
           _set("replication", "reconnect_backoff_max", value=1)),
     "replication.reconnect_backoff_max: must not be less than reconnect_backoff_min"),
    ("backoff-min-above-default-max", _set("replication", "reconnect_backoff_min", value=10),
     "replication.reconnect_backoff_max: must not be less than reconnect_backoff_min"),
    # names and duplicates
    ("dup-node-name", _set("nodes", 1, "name", value="n1"),
     "nodes[1].name: duplicate node name 'n1'"),
    ("dup-node-addr", _set("nodes", 1, "api", value="127.0.0.1:8701"),
     "nodes[1].api: 127.0.0.1:8701 is already used by n1"),
    ("bad-node-name", _set("nodes", 0, "name", value="-n1"),
     "nodes[0].name: must be a name of letters, digits, '_', '.', '-' (1-63 chars), got '-n1'"),
    ("bad-cluster-name", _set("cluster", "name", value="my cluster"),
     "cluster.name: must be a name of letters, digits, '_', '.', '-' (1-63 chars), "
     "got 'my cluster'"),
    ("bad-cf-name", _set("column_families", value=["users", "a/b"]),
     "column_families[1]: must be a name of letters, digits, '_', '.', '-' (1-63 chars), "
     "got 'a/b'"),
    ("cf-not-string", _set("column_families", value=[7]),
     "column_families[0]: must be a name of letters, digits, '_', '.', '-' (1-63 chars), got 7"),
    ("dup-cf", _set("column_families", value=["default", "users", "users"]),
     "column_families[2]: duplicate column family 'users'"),
    ("primary-unknown", _set("cluster", "primary", value="n9"),
     "cluster.primary: 'n9' is not one of the nodes"),
    ("token-short", _set("cluster", "token", value="abc"),
     "cluster.token: must be at least 16 characters"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in CASES],
                         ids=[c[0] for c in CASES])
def test_error_names_file_and_key(tmp_path: Path, mutate: Mutator, expected: str) -> None:
    data = doc()
    mutate(data)
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: {expected}"


def test_max_frame_bytes_must_hold_the_largest_body(tmp_path: Path) -> None:
    body = 1 << 20
    data = doc()
    data["limits"] = {"max_body_bytes": body}
    data["replication"] = {"max_frame_bytes": body + FRAME_OVERHEAD - 1}
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: replication.max_frame_bytes: {body + FRAME_OVERHEAD - 1} is too small for "
        f"limits.max_body_bytes {body}: the largest write must fit in one frame "
        f"(need at least max_body_bytes + {FRAME_OVERHEAD})")
    # exactly enough is fine
    data["replication"] = {"max_frame_bytes": body + FRAME_OVERHEAD}
    cfg = load(write(tmp_path, data))
    assert cfg.replication.max_frame_bytes == body + FRAME_OVERHEAD


def test_default_max_body_needs_a_large_enough_frame(tmp_path: Path) -> None:
    data = doc()
    data["replication"] = {"max_frame_bytes": LimitsConfig().max_body_bytes}
    path = write(tmp_path, data)
    assert error_of(path).startswith(f"{path}: replication.max_frame_bytes: ")


def test_backoff_max_equal_to_min_is_fine(tmp_path: Path) -> None:
    data = doc()
    data["replication"] = {"reconnect_backoff_min": 2, "reconnect_backoff_max": 2}
    cfg = load(write(tmp_path, data))
    assert cfg.replication.reconnect_backoff_max == cfg.replication.reconnect_backoff_min == 2.0


def test_unknown_node_lookup(tmp_path: Path) -> None:
    path = write(tmp_path, doc())
    cfg = load(path)
    with pytest.raises(ConfigError) as info:
        cfg.node("n7")
    assert str(info.value) == f"{path}: node 'n7' is not in 'nodes' (known: n1, n2)"


# -- file-level errors -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "", "# nothing\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert error_of(path) == f"{path}: the top level must be a mapping of keys"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cluster:\n  name: demo\n    token: nested-wrong\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid YAML (line 3, column 10): ")


def test_invalid_yaml_unclosed_flow(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cluster: {name: demo\nnodes: [\n")
    assert error_of(path).startswith(f"{path}: not valid YAML (line ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path) == f"{path}: cannot read config: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: cannot read config: Is a directory"


# -- parse_address ---------------------------------------------------------------------------

_SRC = Path("/etc/hac.yaml")


@given(ip=st.ip_addresses(v=4), port=st.integers(1, 65535))
def test_parse_ipv4_round_trip(ip: ipaddress.IPv4Address, port: int) -> None:
    addr = parse_address(f"{ip}:{port}", _SRC, "k")
    assert addr == Address(str(ip), port)
    assert str(addr) == f"{ip}:{port}"
    assert addr.url == f"http://{ip}:{port}"


@given(ip=st.ip_addresses(v=6), port=st.integers(1, 65535))
def test_parse_ipv6_round_trip(ip: ipaddress.IPv6Address, port: int) -> None:
    addr = parse_address(f"[{ip}]:{port}", _SRC, "k")
    assert addr == Address(str(ip), port)
    assert addr.url == f"http://[{ip}]:{port}"


@given(port=st.one_of(st.integers(65536, 10**9), st.just(0)))
def test_parse_port_out_of_range(port: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(f"10.0.0.1:{port}", _SRC, "nodes[0].api")
    assert str(info.value) == f"{_SRC}: nodes[0].api: port must be 1-65535, got {port}"


@given(octets=st.lists(st.integers(0, 999), min_size=4, max_size=4))
def test_parse_dotted_quad_validity(octets: list[int]) -> None:
    host = ".".join(map(str, octets))
    if max(octets) <= 255:
        assert parse_address(f"{host}:1", _SRC, "k").host == host
    else:
        with pytest.raises(ConfigError) as info:
            parse_address(f"{host}:1", _SRC, "k")
        assert str(info.value) == f"{_SRC}: k: bad IPv4 address {host!r}"


# -- the command line ------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    return subprocess.run([sys.executable, "-m", "hacluster", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_run_refuses_unknown_key(tmp_path: Path) -> None:
    data = doc()
    data["replication"] = {"fsync_on_aply": True}
    bad = write(tmp_path, data, "bad.yaml")
    proc = _cli(["run", "--config", str(bad), "--node", "n1"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}: replication.fsync_on_aply: unknown key" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_cli_check_config_ok(tmp_path: Path) -> None:
    good = write(tmp_path, doc(), "good.yaml")
    proc = _cli(["check-config", "--config", str(good)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{good}: ok (2 nodes)"


def test_cli_check_config_bad(tmp_path: Path) -> None:
    data = doc()
    data["cluster"]["primary"] = "n9"
    bad = write(tmp_path, data, "bad.yaml")
    proc = _cli(["check-config", "--config", str(bad)], tmp_path)
    assert proc.returncode == 2
    assert f"{bad}: cluster.primary: 'n9' is not one of the nodes" in proc.stderr


def test_cli_run_unknown_node(tmp_path: Path) -> None:
    good = write(tmp_path, doc(), "good.yaml")
    proc = _cli(["run", "--config", str(good), "--node", "n7"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{good}: node 'n7' is not in 'nodes' (known: n1, n2)" in proc.stderr
    assert not (tmp_path / "data").exists()


# Regression tests for inputs that once escaped as non-ConfigError exceptions.

def test_unknown_keys_of_mixed_types_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc()) + "1: a\nbogus: b\n")
    assert error_of(path) == f"{path}: 1: unknown key"


def test_nan_is_refused(tmp_path: Path) -> None:
    data = doc()
    data["replication"] = {"heartbeat_interval": float("nan")}
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: replication.heartbeat_interval: must be a number, got NaN"


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_bytes(b"# \xff\xfe\n" + yaml.safe_dump(doc()).encode())
    assert error_of(path).startswith(f"{path}: not UTF-8 text (byte 2)")


def test_duplicate_ipv6_address_is_bracketed(tmp_path: Path) -> None:
    data = doc()
    data["nodes"][0]["api"] = "[::1]:8701"
    data["nodes"][1]["api"] = "[::1]:8701"
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: nodes[1].api: [::1]:8701 is already used by n1"


def test_raft_password_from_file_or_env(tmp_path: Path) -> None:
    data = doc()
    data["cluster"]["raft_password"] = "file-raft-password-123"
    path = write(tmp_path, data)
    assert load(path).raft_password == "file-raft-password-123"
    env = {"HACLUSTER_RAFT_PASSWORD": "env-raft-password-456"}
    assert load(path, env).raft_password == "env-raft-password-456"
    data["cluster"]["raft_password"] = "short"
    path = write(tmp_path, data)
    assert error_of(path) == f"{path}: cluster.raft_password: must be at least 16 characters"


def test_consensus_mode_needs_raft_on_every_node_and_a_password(tmp_path: Path) -> None:
    data = doc()
    del data["cluster"]["primary"]
    data["nodes"][0]["raft"] = "127.0.0.1:8801"
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: nodes[1].raft: every node needs a raft address once "
                              "one has (the primary is then elected)")
    data["nodes"][1]["raft"] = "127.0.0.1:8802"
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: cluster.raft_password: required (in the file or in "
                              "$HACLUSTER_RAFT_PASSWORD) when nodes have raft addresses")
    cfg = load(path, {"HACLUSTER_RAFT_PASSWORD": "raft-password-0123456"})
    assert cfg.uses_consensus and cfg.primary == ""
    assert str(cfg.nodes[1].raft) == "127.0.0.1:8802"


def test_consensus_timings_are_checked(tmp_path: Path) -> None:
    data = doc()
    data["consensus"] = {"lease_s": 1.0, "renew_interval_s": 0.99}
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: consensus.renew_interval_s: must be shorter than "
                              "lease_s * (1 - drift)")
    data["consensus"] = {"election_min_s": 0.5, "election_max_s": 0.4}
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: consensus.election_max_s: must be greater than "
                              "election_min_s")
    data["consensus"] = {"log_compaction_min_entries": 5}
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: consensus.log_compaction_min_entries: must be at least "
                              "10 and at most 10000000, got 5")
    data["consensus"] = {"log_compaction_min_entries": 100, "log_compaction_min_time_s": 30}
    c = load(write(tmp_path, data)).consensus
    assert (c.log_compaction_min_entries, c.log_compaction_min_time_s) == (100, 30.0)


def test_node_tags_are_checked(tmp_path: Path) -> None:
    data = doc()
    data["nodes"][1]["tags"] = ["nofailover", "vip"]
    path = write(tmp_path, data)
    assert error_of(path) == (f"{path}: nodes[1].tags[1]: unknown tag 'vip' (known: "
                              "nofailover, noloadbalance)")
