"""Fuzzing the config loader (``hacluster.config.load_config``).

Documents built from the schema with wrong types, missing and unknown keys, out-of-range
numbers, NaN and infinities, huge integers and strings, NUL characters and deep nesting; raw
YAML text with anchors, aliases, merges, tags and odd scalars; mutated valid files; and YAML
bombs ("billion laughs", merge-key chains, recursive aliases). The loader returns a config
whose every value is within its documented range, or raises ``ConfigError`` starting with the
file's path, in bounded time; never another exception.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count here by N.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from hacluster.config import ClusterConfig, ConfigError, load_config, parse_address
from tests.fuzzing import fuzz_settings, time_limit

REPO = Path(__file__).resolve().parents[1]
TOKEN = "file-token-0123456789"





@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


BASE: dict[str, Any] = {
    "cluster": {"name": "demo", "token": TOKEN, "primary": "n1"},
    "tls": "off",
    "replication": {"mode": "async"},
    "nodes": [
        {"name": "n1", "api": "127.0.0.1:8701", "data_dir": "data/n1"},
        {"name": "n2", "api": "127.0.0.1:8702", "data_dir": "data/n2"},
    ],
}
RAFT = {
    "cluster": {"name": "demo", "token": TOKEN, "raft_password": "raft-password-0123456789"},
    "tls": "off",
    "nodes": [
        {"name": "n1", "api": "127.0.0.1:8701", "raft": "127.0.0.1:8801", "data_dir": "d/n1"},
        {"name": "n2", "api": "127.0.0.1:8702", "raft": "127.0.0.1:8802", "data_dir": "d/n2"},
        {"name": "n3", "api": "127.0.0.1:8703", "raft": "127.0.0.1:8803", "data_dir": "d/n3"},
    ],
}

# Every key of the schema, by section (nodes[] and column_families are handled apart).
SCHEMA: dict[str, list[str]] = {
    "cluster": ["name", "token", "raft_password", "primary", "epoch"],
    "storage": ["wal_ttl_seconds", "wal_size_limit_mb", "write_buffer_size_mb",
                "max_total_wal_size_mb", "fsync_writes", "min_free_mb"],
    "replication": ["mode", "sync_replicas", "sync_timeout_s", "heartbeat_interval",
                    "reconnect_backoff_min", "reconnect_backoff_max", "fsync_on_apply",
                    "max_frame_bytes", "ack_interval", "checkpoint_ttl_seconds",
                    "bootstrap_chunk_bytes", "bootstrap_max_rate_mb_s", "max_replica_lag"],
    "consensus": ["lease_s", "renew_interval_s", "drift", "drift_margin_s", "election_min_s",
                  "election_max_s", "raft_heartbeat_s", "report_interval_s", "member_stale_s",
                  "maximum_lag_on_failover", "log_compaction_min_entries",
                  "log_compaction_min_time_s"],
    "hooks": ["on_promote", "on_demote", "on_role_change", "timeout_s"],
    "watchdog": ["mode", "device", "timeout_s"],
    "limits": ["max_key_bytes", "max_value_bytes", "max_body_bytes", "max_batch_ops"],
}
NODE_KEYS = ["name", "api", "raft", "data_dir", "tags"]

odd_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-10, 10), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**63 - 1, 2**63,
                                                                       2**64, 10**400]),
    st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 1e308, 5e-324, -0.0]),
    st.text(max_size=30), st.sampled_from(["", " ", "\x00", "a\x00b", "~", "~nobody/x",
                                          "127.0.0.1:0", "[::1]:80", "host:65536", "a" * 70,
                                          "x" * 5000, "sync", "async", "off", "required",
                                          "nofailover", "\n", "1" * 5000]),
    st.binary(max_size=8),
)
odd_values = st.recursive(odd_scalars, lambda c: st.lists(c, max_size=3)
                          | st.dictionaries(st.text(max_size=5) | st.integers(), c, max_size=3),
                          max_leaves=5)


@st.composite
def schema_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from([BASE, RAFT])))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "node",
                                    "section", "cfs"]))
        if how in ("set", "delete"):
            section = draw(st.sampled_from(sorted(SCHEMA)))
            key = draw(st.sampled_from(SCHEMA[section]))
            target = doc.setdefault(section, {})
            if not isinstance(target, dict):
                continue
            if how == "set":
                target[key] = draw(odd_values)
            else:
                target.pop(key, None)
        elif how == "unknown":
            where = draw(st.sampled_from(["", *SCHEMA]))
            target = doc if not where else doc.setdefault(where, {})
            if isinstance(target, dict):
                target[draw(st.text(max_size=6) | st.integers())] = draw(odd_values)
        elif how == "node":
            nodes = doc["nodes"]
            if isinstance(nodes, list) and nodes:
                i = draw(st.integers(0, len(nodes) - 1))
                if isinstance(nodes[i], dict):
                    key = draw(st.sampled_from(NODE_KEYS))
                    if draw(st.booleans()):
                        nodes[i][key] = draw(odd_values)
                    else:
                        nodes[i].pop(key, None)
                else:
                    nodes[i] = draw(odd_values)
        elif how == "section":
            doc[draw(st.sampled_from(["cluster", "nodes", *SCHEMA]))] = draw(odd_values)
        else:
            doc["column_families"] = draw(odd_values | st.lists(
                st.sampled_from(["default", "users", "a/b", "x" * 64, ""]), max_size=4))
    return doc


def check_loaded(cfg: ClusterConfig) -> None:
    """A config that loads holds only values the rest of the node can use."""
    numbers = [getattr(section, f) for section in (cfg.storage, cfg.replication, cfg.limits,
                                                   cfg.consensus, cfg.hooks, cfg.watchdog)
               for f in section.__slots__]
    for value in [cfg.epoch, *numbers]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert math.isfinite(value) and abs(value) < 2**63, value
    for node in cfg.nodes:
        assert "\x00" not in str(node.data_dir)
        assert 1 <= node.api.port <= 65535
    assert all(ord(c) >= 32 and c != "\x7f" for c in cfg.token)


def load(path: Path, text: str | bytes, env: dict[str, str] | None = None) -> str | None:
    """Load ``text`` from ``path``: None if it loads, else the ConfigError message."""
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    with time_limit(20):
        try:
            cfg = load_config(path, env={} if env is None else env)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: "), message
            assert len(message) < 5000, len(message)
            return message
    check_loaded(cfg)
    return None


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@fuzz_settings(300)
@given(doc=schema_documents())
@example(doc={**BASE, "cluster": {**BASE["cluster"], "epoch": 2**64}})
@example(doc={**BASE, "replication": {"heartbeat_interval": 10**400}})
@example(doc={**BASE, "replication": {"mode": "async", "bootstrap_max_rate_mb_s": math.inf}})
@example(doc={**BASE, "storage": {"wal_ttl_seconds": 2**64}})
@example(doc={**BASE, "nodes": [{"name": "n1", "api": "127.0.0.1:8701", "data_dir": "a\x00b"}]})
def test_schema_documents_load_or_name_file_and_key(scratch: Path, doc: dict[str, Any]) -> None:
    try:
        text = dump(doc)
    except (yaml.YAMLError, ValueError, TypeError):
        return
    message = load(scratch / "cluster.yaml", text)
    if message is not None:
        # "<file>: <key or problem>: <detail>"
        assert message.count(": ") >= 2 or "not valid YAML" in message, message


# -- raw YAML ------------------------------------------------------------------------------------

YAML_SCALARS = ["1", "-1", "0x1F", "0o17", "0b101", "1_000", "1:30:00", "190:20:30", ".inf",
                "-.inf", ".nan", ".NaN", "1e400", "-1e400", "0x" + "f" * 400, "1" * 5000,
                "2001-12-14", "2001-13-45", "2001-02-30t00:00:00Z", "yes", "no", "on", "off",
                "~", "null", "''", '""', '"\\0"', '"\\x00"', '"\\uD800"', "!!binary aGk=",
                "!!binary '!!'", "!!int x", "!!float x", "!!timestamp 99", "!!str 5",
                "!!python/object/apply:os.system [true]", "!!set {a, b}", "!!omap [a: 1]",
                "!!pairs [a: 1]", "!!null x", "!!bool maybe", "!!map [1]", "!!seq {a: 1}",
                "127.0.0.1:8701", "[::1]:80", "&a 1", "*a", "*nope", "<<", "? a", "- a", "|",
                ">", "'unterminated", "[1, 2", "{a: 1", "{a: 1, a: 2}", "@", "`", "%"]


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """Mostly-valid YAML around a valid config: odd scalars in schema positions, anchors and
    aliases, merge keys, and fragments of invalid syntax."""
    lines = dump(draw(st.sampled_from([BASE, RAFT]))).splitlines()
    for _ in range(draw(st.integers(1, 5))):
        how = draw(st.sampled_from(["scalar", "line", "anchor", "merge", "delete", "indent"]))
        i = draw(st.integers(0, len(lines) - 1))
        if how == "scalar" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(YAML_SCALARS))}"
        elif how == "line":
            section = draw(st.sampled_from(sorted(SCHEMA)))
            key = draw(st.sampled_from(SCHEMA[section]))
            lines.append(f"{section}: {{{key}: {draw(st.sampled_from(YAML_SCALARS))}}}")
        elif how == "anchor":
            lines.insert(0, "x0: &a0 [" + ", ".join(["v"] * draw(st.integers(1, 9))) + "]")
            for level in range(1, draw(st.integers(1, 12))):
                lines.insert(level, f"x{level}: &a{level} [" + ", ".join(
                    [f"*a{level - 1}"] * draw(st.integers(1, 9))) + "]")
        elif how == "merge":
            lines.insert(0, "m0: &m0 {k: 1}")
            for level in range(1, draw(st.integers(1, 25))):
                lines.insert(level, f"m{level}: &m{level} {{<<: [*m{level - 1}, "
                                    f"*m{level - 1}], k{level}: 1}}")
        elif how == "delete":
            del lines[i]
        else:
            lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
        if not lines:
            lines = ["{}"]
    return "\n".join(lines) + "\n"


@fuzz_settings(300)
@given(text=yaml_texts())
@example(text="a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i > 1 else "*a"] * 10) + "]\n"
    for i in range(1, 9)) + dump(BASE).replace("primary: n1", "primary: *a8"))
@example(text="r: &r [*r]\n" + dump(BASE))
@example(text="[" * 5000 + "]" * 5000)
@example(text="x:\n" + "".join(" " * i + "- \n" for i in range(3000)))
def test_yaml_texts_load_or_raise_config_error(scratch: Path, text: str) -> None:
    load(scratch / "raw.yaml", text)


@fuzz_settings(200)
@given(data=st.data())
def test_mutated_repo_config(scratch: Path, data: st.DataObject) -> None:
    text = bytearray((REPO / "cluster.yaml").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if not text:
            break
        pos = data.draw(st.integers(0, len(text) - 1))
        how = data.draw(st.sampled_from(["flip", "insert", "remove", "truncate"]))
        if how == "flip":
            text[pos] ^= data.draw(st.integers(1, 255))
        elif how == "insert":
            text[pos:pos] = data.draw(st.sampled_from([b"&a ", b"*a", b"[", b"{", b":", b"\t",
                                                       b"- ", b"!!", b"\x00", b"\xff", b"'",
                                                       b"\n  ", b"<<: *a\n"]))
        elif how == "remove":
            del text[pos:pos + data.draw(st.integers(1, 5))]
        else:
            del text[pos:]
    load(scratch / "mutated.yaml", bytes(text))


@fuzz_settings(100)
@given(token=st.text(min_size=16, max_size=40), password=st.text(max_size=40))
@example(token="token-with-newline\n0123456789", password="")
@example(token="token\x00with-a-nul-0123456789", password="")
@example(token="token-from-latin-1-\udce9-0123", password="")
@example(token="x" * 16, password="password-from-latin-1-\udce9")
def test_secrets_from_the_environment(scratch: Path, token: str, password: str) -> None:
    env = {"HACLUSTER_TOKEN": token, "HACLUSTER_RAFT_PASSWORD": password}
    # What os.environ can hold: no NUL; undecodable bytes arrive as \udc80-\udcff.
    env = {k: v for k, v in env.items() if "\x00" not in v}
    message = load(scratch / "env.yaml", dump(RAFT), env)
    if message is None:
        for value in env.values():
            value.encode("utf-8")  # whatever is accepted can be sent and compared as bytes


@given(text=st.text(max_size=40) | st.sampled_from(
    ["127.0.0.1:" + "9" * 5000, "[::1]:" + "1" * 5000, "[" + "f" * 5000 + "]:80",
     "h" * 5000 + ":80", "127.0.0.1:\u0668\u0667\u0660\u0661", "1.2.3.4:080"]))
def test_parse_address_raises_only_config_error(text: str) -> None:
    try:
        address = parse_address(text, Path("x.yaml"), "api")
    except ConfigError as exc:
        assert str(exc).startswith("x.yaml: api: ") and len(str(exc)) < 500
        return
    assert 1 <= address.port <= 65535


# -- regressions (found by the tests above) ------------------------------------------------------


def laughs(levels: int, width: int = 10) -> str:
    text = "l0: &l0 [" + ", ".join(["lol"] * width) + "]\n"
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n"
    return text


REGRESSIONS: list[tuple[str, str, str]] = [
    # PyYAML's ValueError for a 5000-digit integer, a bad date: escaped as ValueError.
    ("huge decimal", dump(BASE) + "extra: " + "1" * 5000 + "\n",
     "cannot read int value: ValueError: Exceeds the limit (4300 digits)"),
    ("bad date", dump(BASE) + "extra: 2001-02-30\n",
     "cannot read timestamp value: ValueError: day is out of range for month"),
    # Explicit tags on scalars PyYAML cannot read: AttributeError, KeyError.
    ("timestamp tag", dump(BASE).replace("name: demo", "name: !!timestamp 99"),
     "not valid YAML (line 2, column 9): cannot read timestamp value: AttributeError"),
    ("bool tag", dump(BASE).replace("name: demo", "name: !!bool maybe"),
     "not valid YAML (line 2, column 9): cannot read bool value: KeyError: 'maybe'"),
    # Converting a 1200-bit hex integer to float: OverflowError.
    ("hex into float", dump(BASE) + "storage: {}\nhooks: {timeout_s: 0x" + "f" * 300 + "}\n",
     "hooks.timeout_s: number out of range, got <1200-bit integer>"),
    # Printing a 20000-bit hex integer in the range error: ValueError.
    ("hex epoch", dump(BASE).replace("primary: n1", "primary: n1\n  epoch: 0x" + "f" * 5000),
     "cluster.epoch: must be at most 9223372036854775807, got <20000-bit integer>"),
    # A port of 5000 digits: int() refused it (ValueError).
    ("huge port", dump(BASE).replace("127.0.0.1:8701", "127.0.0.1:" + "9" * 5000),
     "nodes[0].api: port must be 1-65535, got 99999999999999999999..."),
    # A NUL in a relative data_dir: ValueError from Path.resolve(); absolute: accepted, and
    # the node failed later opening its database.
    ("nul data_dir", dump(BASE).replace("data_dir: data/n1", 'data_dir: "data/\\0n1"'),
     "nodes[0].data_dir: must not contain a NUL character"),
    ("nul data_dir absolute", dump(BASE).replace("data_dir: data/n1", 'data_dir: "/d/\\0n1"'),
     "nodes[0].data_dir: must not contain a NUL character"),
    ("nul hook", dump(BASE) + 'hooks: {on_promote: "echo \\0"}\n',
     "hooks.on_promote: must not contain a NUL character"),
    # Deep nesting: RecursionError from PyYAML's composer.
    ("deep flow", dump(BASE) + "extra: " + "[" * 5000 + "]" * 5000 + "\n",
     "nested deeper than 64 levels"),
    ("deep block", dump(BASE) + "extra:\n" + "".join(" " * i + "- \n" for i in range(300)),
     "nested deeper than 64 levels"),
    # Billion laughs: the repr in "unknown tag ..." walked 10**8 strings (140 s).
    ("laughs in tags", laughs(9) + dump(BASE).replace("data_dir: data/n1",
                                                      "data_dir: data/n1\n  tags: [*l8]"),
     "more than 100000 values once its anchors are expanded"),
    ("laughs unused", laughs(9) + dump(BASE),
     "more than 100000 values once its anchors are expanded"),
    ("merge chain", "m0: &m0 {k: 1}\n" + "".join(
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}\n" for i in range(1, 30))
     + dump(BASE), "more than 100000 values once its anchors are expanded"),
    ("recursive alias", "r: &r {a: *r}\n" + dump(BASE).replace("name: demo", "name: *r"),
     "recursive alias"),
    ("infinite rate", dump(BASE).replace("mode: async", "mode: async\n  "
                                         "bootstrap_max_rate_mb_s: .inf"),
     "replication.bootstrap_max_rate_mb_s: must be a finite number, got inf"),
    ("token with a newline", dump(BASE).replace(TOKEN, '"token-0123456789\\nX-Evil: 1"'),
     "cluster.token: must not contain control characters"),
    # "\uD800" in a double-quoted string: a str no path or header can encode; a relative
    # data_dir made Path.resolve() raise UnicodeEncodeError (found by the long run).
    ("surrogate data_dir", dump(BASE).replace("data_dir: data/n1", 'data_dir: "\\uD800"'),
     "not valid YAML (line 11, column 13): a string with an unpaired surrogate escape"),
    ("surrogate token", dump(BASE).replace(TOKEN, '"\\udce9' + TOKEN + '"'),
     "a string with an unpaired surrogate escape"),
    # Accepted, then RocksDB's options (uint64 bytes) raised OverflowError when the node
    # opened its database.
    ("wal size in bytes past uint64", dump(BASE) + "storage: {max_total_wal_size_mb: "
     + str(2**62) + "}\n",
     "storage.max_total_wal_size_mb: must be at least 0 and at most 1099511627776, got "
     + str(2**62)),
    ("ttl past int64", dump(BASE) + "storage: {wal_ttl_seconds: " + str(2**64) + "}\n",
     "storage.wal_ttl_seconds: must be at most 9223372036854775807, got 18446744073709551616"),
    ("huge int key", dump(BASE) + "? 0x" + "f" * 5000 + "\n: 1\n",
     "<20000-bit integer>: unknown key"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in REGRESSIONS],
                         ids=[r[0] for r in REGRESSIONS])
def test_regressions(scratch: Path, text: str, expected: str) -> None:
    start = time.monotonic()
    message = load(scratch / "regression.yaml", text)
    assert message is not None and expected in message, message
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("name", "value"), [("HACLUSTER_TOKEN", "token-\udce9-0123456789"),
                                             ("HACLUSTER_RAFT_PASSWORD", "raft-\udce9-0123456789")])
def test_undecodable_secret_from_the_environment(scratch: Path, name: str, value: str) -> None:
    """A secret holding bytes that are not UTF-8 (os.environ gives them as surrogates) would
    make the node fail when it first encodes it: refused up front."""
    message = load(scratch / "secret.yaml", dump(RAFT), {name: value})
    assert message is not None and message.endswith(f"${name}: is not valid UTF-8"), message


def test_a_huge_file_is_refused_without_reading_it_all(scratch: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match="larger than 1048576 bytes, not a config file"):
        load_config("/dev/zero", env={})
    big = scratch / "big.yaml"
    big.write_text(dump(BASE) + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(big, env={})
    assert time.monotonic() - start < 5


def test_corpus_files(scratch: Path) -> None:
    """Inputs kept from fuzzing sessions: each must give a ConfigError, fast."""
    corpus = Path(__file__).parent / "fuzz_regressions" / "config"
    files = sorted(corpus.glob("*.yaml"))
    for path in files:
        start = time.monotonic()
        with time_limit(20), pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert str(info.value).startswith(f"{path}: ")
        assert time.monotonic() - start < 5, path
