"""Cluster configuration: load a YAML file, validate every key up front, return frozen dataclasses.

Owns the schema (every key, its type, its default) and the error messages that name the file and
the key. It must never start anything, open a database, or touch the network: a bad config fails
before any of that happens. Secrets may come from the environment (``HACLUSTER_TOKEN``,
``HACLUSTER_RAFT_PASSWORD``), which override the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOKEN_ENV = "HACLUSTER_TOKEN"
RAFT_PASSWORD_ENV = "HACLUSTER_RAFT_PASSWORD"

NODE_TAGS = frozenset({"nofailover", "noloadbalance"})
# Room in a frame beyond the WriteBatch itself (CBOR map, header fields, checksum).
FRAME_OVERHEAD = 4096
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Integers without a natural bound still have to fit the int64/uint64 fields of RocksDB
# options and of the replication frames.
_INT_MAX = (1 << 63) - 1
# A config is a page of YAML: deeper nesting, or more nodes once anchors are expanded, is a
# mistake or an attack ("billion laughs"), and would exhaust the stack or the memory.
_YAML_MAX_DEPTH = 64
# A "\ud800"-style escape gives a str that cannot be encoded: no path, header or command.
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_CONFIG_BYTES = 1 << 20
_YAML_MAX_NODES = 100_000


class ConfigError(Exception):
    """A config file is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    api: Address
    data_dir: Path
    raft: Address | None = None
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class StorageConfig:
    wal_ttl_seconds: int = 3600
    wal_size_limit_mb: int = 4096
    write_buffer_size_mb: int = 64
    max_total_wal_size_mb: int = 0
    fsync_writes: bool = False
    # "fsync": nothing is acknowledged (by the primary to a client, or by a replica to the
    # primary) before it is on disk, one WAL sync per round of writes (group commit), so a
    # power loss of every node at once loses no acknowledged write. "os_buffer": in the page
    # cache only, which survives a process crash but not a power loss.
    durability: str = "fsync"
    # The primary refuses writes (507) while its data dir's file system has less free space
    # than this, before RocksDB itself runs out (0: only below 1 MB, or on RocksDB's error).
    min_free_mb: int = 64
    # An emergency reserve file (real blocks) deleted when space runs low, so the Raft journal
    # and a RocksDB reopen still have room; 0: none.
    reserve_mb: int = 32
    # Retention of divergent-tail files and of databases set aside for incomplete tails.
    divergent_keep_days: int = 30
    divergent_max_mb: int = 1024


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    heartbeat_interval: float = 0.5
    reconnect_backoff_min: float = 0.1
    reconnect_backoff_max: float = 5.0
    fsync_on_apply: bool = False
    max_frame_bytes: int = 80 << 20
    ack_interval: float = 0.0
    checkpoint_ttl_seconds: int = 3600
    bootstrap_chunk_bytes: int = 1 << 20
    bootstrap_max_rate_mb_s: float = 0.0
    # Checkpoints that may exist at once on the primary (each pins the SST files it links).
    max_checkpoints: int = 4
    # "sync" (the default with consensus): a write is acknowledged once the synchronous set
    # has it; "async" (the only mode without consensus): once it is in the primary's DB.
    mode: str = "sync"
    sync_replicas: int = 1
    sync_timeout_s: float = 5.0
    # /replica, /read-only and /readiness: how far behind (in sequence numbers, one per op) a
    # replica may be and still serve reads.
    max_replica_lag: int = 100_000
    # GET ?min_seq=N on a replica: how long to wait for it to reach N before answering 503.
    min_seq_wait_s: float = 2.0


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Timings of the Raft layer and of the primary lease (used when nodes have ``raft``)."""

    # Measured with bench/failover.py on this project's 2-core machines: p50 ~0.9 s, max ~1.6 s.
    lease_s: float = 0.6
    renew_interval_s: float = 0.1
    drift: float = 0.05
    drift_margin_s: float = 0.05
    # Raft elections must finish well inside the lease, or losing the Raft leader alone
    # lapses the primary's lease (writes pause) or even causes a needless failover.
    election_min_s: float = 0.15
    election_max_s: float = 0.35
    raft_heartbeat_s: float = 0.04
    report_interval_s: float = 0.5
    member_stale_s: float = 3.0
    maximum_lag_on_failover: int = 1 << 20
    # An unanswered Acquire / synchronous set proposal is made again after this long.
    acquire_retry_s: float = 2.0
    sync_set_retry_s: float = 2.0
    # The Raft log is compacted into a dump once it holds this many entries or is this old:
    # about 15 entries a second with default timings, so a few minutes of log at most.
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: float = 60.0


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """A Linux watchdog device armed while this node is a writable primary (like Patroni's)."""

    mode: str = "off"                  # off | automatic | required
    device: Path = Path("/dev/watchdog")
    timeout_s: int = 5                 # the device resets the host if not fed for this long


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Shell commands run on role changes (in the background, with a timeout)."""

    on_promote: str | None = None
    on_demote: str | None = None
    on_role_change: str | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_key_bytes: int = 64 << 10
    max_value_bytes: int = 16 << 20
    max_body_bytes: int = 64 << 20
    max_batch_ops: int = 100_000


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole validated config; ``source`` is the file it came from."""

    name: str
    token: str
    raft_password: str | None   # for the consensus layer; optional until it lands
    primary: str
    epoch: int
    column_families: tuple[str, ...]
    nodes: tuple[NodeConfig, ...]
    storage: StorageConfig
    replication: ReplicationConfig
    limits: LimitsConfig
    source: Path
    consensus: ConsensusConfig = ConsensusConfig()
    hooks: HooksConfig = HooksConfig()
    watchdog: WatchdogConfig = WatchdogConfig()

    @property
    def uses_consensus(self) -> bool:
        """Every node has a ``raft`` address: the primary is elected, not configured."""
        return all(n.raft is not None for n in self.nodes)

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"{self.source}: node {name!r} is not in 'nodes' (known: {known})")


class _Reader:
    """Walks a mapping, remembering the dotted key path so every error can name it."""

    def __init__(self, source: Path, data: Mapping[str, Any], path: str) -> None:
        self.source = source
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                return self._missing(name)
            return default
        value = self.data[name]
        # bool is an int in Python; a YAML `true` must not pass as a port or a size.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(self.key(name), f"expected {_kind_name(kind)}, got a boolean")
        if float in (kind if isinstance(kind, tuple) else (kind,)) and isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:
                raise self.fail(self.key(name), f"number out of range, got {brief(value)}") \
                    from None
        if not isinstance(value, kind):
            raise self.fail(
                self.key(name), f"expected {_kind_name(kind)}, got {type(value).__name__}"
            )
        return value

    def _missing(self, name: str) -> Any:
        raise self.fail(self.key(name), "required key is missing")

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float | None = None
    ) -> float:
        value = float(self.get(name, float, default))
        self._bounds(name, value, minimum, maximum)
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = int(self.get(name, int, default))
        self._bounds(name, value, minimum, maximum)
        if value > _INT_MAX:
            raise self.fail(self.key(name), f"must be at most {_INT_MAX}, got {brief(value)}")
        return value

    def _bounds(self, name: str, value: float, minimum: float, maximum: float | None) -> None:
        if value != value:  # NaN compares false with everything, so it would pass the bounds
            raise self.fail(self.key(name), "must be a number, got NaN")
        if isinstance(value, float) and math.isinf(value):
            raise self.fail(self.key(name), f"must be a finite number, got {value}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(self.key(name),
                            f"must be at least {minimum}{upper}, got {brief(value)}")

    def child(self, name: str, required: bool = False) -> _Reader:
        value = self.get(name, dict, ... if required else {})
        return _Reader(self.source, value, self.key(name))

    def finish(self) -> None:
        unknown = sorted(k if isinstance(k, str) and len(k) <= 100 else brief(k)
                         for k in set(self.data) - self.seen)
        if unknown:
            raise self.fail(self.key(str(unknown[0])), "unknown key")


def brief(value: object, limit: int = 60) -> str:
    """A short repr of a value from a config file or a request body, for an error message.

    Bounded in length and in cost whatever the value: an integer too long for ``str`` to
    convert, a megabyte string, or a deep, self-referencing or alias-expanded container (YAML
    anchors, CBOR shared references) that a plain ``repr`` would walk in full.
    """
    return _brief(value, limit, 2)


def _brief(value: object, limit: int, depth: int) -> str:
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, str | bytes | bytearray):
        shown = repr(value[:limit])
        return f"{shown}..." if len(value) > limit else shown
    if isinstance(value, list | tuple | dict | set | frozenset):
        if depth <= 0:
            return f"<{type(value).__name__} of {len(value)}>"
        parts: list[str] = []
        items = value.items() if isinstance(value, dict) else value
        for i, item in enumerate(items):
            if i == 4:
                parts.append("...")
                break
            if isinstance(value, dict):
                parts.append(f"{_brief(item[0], 20, depth - 1)}: {_brief(item[1], 20, depth - 1)}")
            else:
                parts.append(_brief(item, 20, depth - 1))
        inner = ", ".join(parts)
        if isinstance(value, list):
            return f"[{inner}]"
        if isinstance(value, tuple):
            return f"({inner})"
        return f"{{{inner}}}"
    return f"<{type(value).__name__}>"


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with bounds: nesting depth, the size of the document once
    anchors are expanded (no recursive anchors), and malformed scalars reported as YAML errors
    with their position (PyYAML lets the ``ValueError`` of a bad date or a 5000-digit integer,
    or the ``AttributeError`` of ``!!timestamp 99``, escape)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > _YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {_YAML_MAX_DEPTH} levels",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # ValueError, KeyError (`!!bool maybe`), AttributeError, ...
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]} value: "
                f"{type(exc).__name__}: {exc}", node.start_mark) from None


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose node tree, with every alias expanded, is recursive or holds
    more than ``_YAML_MAX_NODES`` nodes, or that has a string no OS call or HTTP header could
    take (an unpaired surrogate). Linear in the (unexpanded) document."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node.value, str) and _SURROGATE.search(node.value):
            raise yaml.composer.ComposerError(
                None, None, "a string with an unpaired surrogate escape (\\uD800-\\uDFFF) "
                "cannot be encoded as UTF-8", node.start_mark)
        if done:
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > _YAML_MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {_YAML_MAX_NODES} values once its anchors are "
                    "expanded", node.start_mark)
            sizes[id(node)] = total
            continue
        if id(node) in sizes:
            continue
        if id(node) in entered:  # only ancestors are entered and not yet done
            raise yaml.composer.ComposerError(None, None, "recursive alias", node.start_mark)
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_address(text: str, source: Path, key: str) -> Address:
    """``host:port`` with a literal IP address (IPv6 in brackets) or a host name."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)|([^:\[\]\s]+):([0-9]+)", text.strip())
    if not match:
        raise ConfigError(f"{source}: {key}: expected host:port, got {brief(text)}")
    host = match.group(1) or match.group(3)
    digits = match.group(2) or match.group(4)
    # Thousands of digits would make int() refuse (and be no port anyway).
    port = int(digits) if len(digits) <= 6 else 0
    if not 1 <= port <= 65535:
        shown = digits if len(digits) <= 20 else f"{digits[:20]}..."
        raise ConfigError(f"{source}: {key}: port must be 1-65535, got {shown}")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{source}: {key}: bad IPv6 address {brief(host)}") from None
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{source}: {key}: bad IPv4 address {brief(host)}") from None
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        raise ConfigError(f"{source}: {key}: bad host name {brief(host)}")
    return Address(host, port)


def _text(reader: _Reader, name: str, default: Any = ...) -> Any:
    """A string that becomes a path or a command: the OS cannot take a NUL in either."""
    value = reader.get(name, str, default)
    if isinstance(value, str) and "\0" in value:
        raise reader.fail(reader.key(name), "must not contain a NUL character")
    return value


def _name(reader: _Reader, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise reader.fail(
            key, "must be a name of letters, digits, '_', '.', '-' (1-63 chars), "
            f"got {brief(value)}"
        )
    return value


def load_config(path: str | os.PathLike[str],
                env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read and validate ``path``; raise ConfigError naming the file and key on any problem."""
    source = Path(path)
    env = os.environ if env is None else env
    try:
        with open(source, "rb") as f:
            # Bounded: a config is a page of YAML, not /dev/zero or a misplaced disk image.
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {_MAX_CONFIG_BYTES} bytes, not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a PyYAML bug not caught above
        raise ConfigError(f"{source}: not valid YAML: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return _build(_Reader(source, data, ""), source, env)


def _build(top: _Reader, source: Path, env: Mapping[str, str]) -> ClusterConfig:
    cluster = top.child("cluster", required=True)
    name = _name(cluster, "cluster.name", cluster.get("name", str))
    token = cluster.get("token", str, "")
    token = env.get(TOKEN_ENV) or token  # the environment overrides the file
    if not token:
        raise cluster.fail("cluster.token", f"required (in the file or in ${TOKEN_ENV})")
    if len(token) < 16:
        where = f"${TOKEN_ENV}" if env.get(TOKEN_ENV) else "cluster.token"
        raise cluster.fail(where, "must be at least 16 characters")
    if any(c < " " or c == "\x7f" for c in token):
        where = f"${TOKEN_ENV}" if env.get(TOKEN_ENV) else "cluster.token"
        raise cluster.fail(where, "must not contain control characters (it is sent in an "
                                  "HTTP header)")
    if _SURROGATE.search(token):  # undecodable bytes in the environment
        raise cluster.fail(f"${TOKEN_ENV}", "is not valid UTF-8")
    raft_password = cluster.get("raft_password", str, "")
    raft_password = env.get(RAFT_PASSWORD_ENV) or raft_password or None
    if raft_password is not None and _SURROGATE.search(raft_password):
        raise cluster.fail(f"${RAFT_PASSWORD_ENV}", "is not valid UTF-8")
    if raft_password is not None and len(raft_password) < 16:
        raise cluster.fail("cluster.raft_password", "must be at least 16 characters")
    primary = cluster.get("primary", str, "")
    epoch = cluster.integer("epoch", 1, minimum=1)
    cluster.finish()

    cfs_raw = top.get("column_families", list, ["default"])
    cfs: list[str] = []
    for i, cf in enumerate(cfs_raw):
        cf_name = _name(top, f"column_families[{i}]", cf)
        if cf_name in cfs:
            raise top.fail(f"column_families[{i}]", f"duplicate column family {cf_name!r}")
        cfs.append(cf_name)
    if "default" not in cfs:
        cfs.insert(0, "default")

    storage = _storage(top.child("storage"))
    replication = _replication(top.child("replication"))
    limits = _limits(top.child("limits"))
    consensus = _consensus(top.child("consensus"))
    hooks_r = top.child("hooks")
    hooks = HooksConfig(
        on_promote=_text(hooks_r, "on_promote", None),
        on_demote=_text(hooks_r, "on_demote", None),
        on_role_change=_text(hooks_r, "on_role_change", None),
        timeout_s=hooks_r.number("timeout_s", HooksConfig().timeout_s, minimum=0.1,
                                 maximum=3600))
    hooks_r.finish()
    watchdog = _watchdog(top.child("watchdog"))
    nodes = _nodes(top, source)
    top.finish()
    with_raft = [n.name for n in nodes if n.raft is not None]
    if with_raft and len(with_raft) != len(nodes):
        missing = next(i for i, n in enumerate(nodes) if n.raft is None)
        raise ConfigError(f"{source}: nodes[{missing}].raft: every node needs a raft address "
                          "once one has (the primary is then elected)")
    if with_raft and not raft_password:
        raise cluster.fail("cluster.raft_password", "required (in the file or in "
                           f"${RAFT_PASSWORD_ENV}) when nodes have raft addresses")
    if not with_raft and not primary:
        raise cluster.fail("cluster.primary", "required when nodes have no raft addresses "
                           "(without consensus the primary is configured)")

    if not replication.mode:   # not set: safe by default where it can be
        replication = dataclasses.replace(replication, mode="sync" if with_raft else "async")
    if replication.mode == "sync" and not with_raft:
        raise ConfigError(f"{source}: replication.mode: sync needs consensus (raft addresses on "
                          "every node): the synchronous set is recorded in Raft")
    if replication.mode == "sync" and replication.sync_replicas > len(nodes) - 1:
        raise ConfigError(f"{source}: replication.sync_replicas: {replication.sync_replicas} "
                          f"needs at least {replication.sync_replicas + 1} nodes")
    if limits.max_body_bytes + FRAME_OVERHEAD > replication.max_frame_bytes:
        raise ConfigError(
            f"{source}: replication.max_frame_bytes: {replication.max_frame_bytes} is too small "
            f"for limits.max_body_bytes {limits.max_body_bytes}: the largest write must fit in "
            f"one frame (need at least max_body_bytes + {FRAME_OVERHEAD})")
    if primary and primary not in {n.name for n in nodes}:
        raise cluster.fail("cluster.primary", f"{brief(primary)} is not one of the nodes")
    if watchdog.mode != "off" and not with_raft:
        raise ConfigError(f"{source}: watchdog.mode: {watchdog.mode} needs consensus (raft "
                          "addresses on every node): the watchdog is fed by the lease loop")
    return ClusterConfig(
        name=name, token=token, raft_password=raft_password, primary=primary, epoch=epoch,
        column_families=tuple(cfs),
        nodes=nodes, storage=storage, replication=replication, limits=limits, source=source,
        consensus=consensus, hooks=hooks, watchdog=watchdog,
    )


def _storage(r: _Reader) -> StorageConfig:
    d = StorageConfig()
    result = StorageConfig(
        wal_ttl_seconds=r.integer("wal_ttl_seconds", d.wal_ttl_seconds, minimum=1),
        wal_size_limit_mb=r.integer("wal_size_limit_mb", d.wal_size_limit_mb, minimum=1),
        write_buffer_size_mb=r.integer(
            "write_buffer_size_mb", d.write_buffer_size_mb, minimum=1, maximum=4096
        ),
        # RocksDB takes it in bytes (uint64): at most 2**40 MB.
        max_total_wal_size_mb=r.integer("max_total_wal_size_mb", d.max_total_wal_size_mb,
                                        minimum=0, maximum=1 << 40),
        fsync_writes=r.get("fsync_writes", bool, d.fsync_writes),
        durability=r.get("durability", str, d.durability),
        min_free_mb=r.integer("min_free_mb", d.min_free_mb, minimum=0),
        reserve_mb=r.integer("reserve_mb", d.reserve_mb, minimum=0, maximum=1 << 20),
        divergent_keep_days=r.integer("divergent_keep_days", d.divergent_keep_days, minimum=1,
                                      maximum=36_500),
        divergent_max_mb=r.integer("divergent_max_mb", d.divergent_max_mb, minimum=1,
                                   maximum=1 << 30),
    )
    if result.durability not in DURABILITY:
        raise r.fail(r.key("durability"), f"must be one of {', '.join(DURABILITY)}, got "
                     f"{brief(result.durability)}")
    r.finish()
    return result


DURABILITY = ("fsync", "os_buffer")


def _replication(r: _Reader) -> ReplicationConfig:
    d = ReplicationConfig()
    result = ReplicationConfig(
        mode=r.get("mode", str, ""),
        sync_replicas=r.integer("sync_replicas", d.sync_replicas, minimum=1, maximum=16),
        sync_timeout_s=r.number("sync_timeout_s", d.sync_timeout_s, minimum=0.1, maximum=600),
        heartbeat_interval=r.number("heartbeat_interval", d.heartbeat_interval,
                                    minimum=0.01, maximum=60),
        reconnect_backoff_min=r.number("reconnect_backoff_min", d.reconnect_backoff_min,
                                       minimum=0.001, maximum=60),
        reconnect_backoff_max=r.number("reconnect_backoff_max", d.reconnect_backoff_max,
                                       minimum=0.01, maximum=600),
        fsync_on_apply=r.get("fsync_on_apply", bool, d.fsync_on_apply),
        max_frame_bytes=r.integer("max_frame_bytes", d.max_frame_bytes, minimum=1 << 16,
                                  maximum=1 << 30),
        ack_interval=r.number("ack_interval", d.ack_interval, minimum=0, maximum=10),
        checkpoint_ttl_seconds=r.integer("checkpoint_ttl_seconds", d.checkpoint_ttl_seconds,
                                         minimum=10),
        max_checkpoints=r.integer("max_checkpoints", d.max_checkpoints, minimum=1,
                                  maximum=1024),
        bootstrap_chunk_bytes=r.integer("bootstrap_chunk_bytes", d.bootstrap_chunk_bytes,
                                        minimum=4096, maximum=64 << 20),
        bootstrap_max_rate_mb_s=r.number("bootstrap_max_rate_mb_s", d.bootstrap_max_rate_mb_s,
                                         minimum=0),
        max_replica_lag=r.integer("max_replica_lag", d.max_replica_lag, minimum=0),
        min_seq_wait_s=r.number("min_seq_wait_s", d.min_seq_wait_s, minimum=0, maximum=60),
    )
    if result.mode not in ("sync", "async", ""):
        raise r.fail(r.key("mode"), f"must be sync or async, got {brief(result.mode)}")
    if result.reconnect_backoff_max < result.reconnect_backoff_min:
        raise r.fail(r.key("reconnect_backoff_max"), "must not be less than reconnect_backoff_min")
    r.finish()
    return result


def _consensus(r: _Reader) -> ConsensusConfig:
    d = ConsensusConfig()
    result = ConsensusConfig(
        lease_s=r.number("lease_s", d.lease_s, minimum=0.1, maximum=60),
        renew_interval_s=r.number("renew_interval_s", d.renew_interval_s, minimum=0.01,
                                  maximum=30),
        drift=r.number("drift", d.drift, minimum=0, maximum=0.4),
        drift_margin_s=r.number("drift_margin_s", d.drift_margin_s, minimum=0, maximum=10),
        election_min_s=r.number("election_min_s", d.election_min_s, minimum=0.05, maximum=30),
        election_max_s=r.number("election_max_s", d.election_max_s, minimum=0.05, maximum=60),
        raft_heartbeat_s=r.number("raft_heartbeat_s", d.raft_heartbeat_s, minimum=0.01,
                                  maximum=10),
        report_interval_s=r.number("report_interval_s", d.report_interval_s, minimum=0.05,
                                   maximum=60),
        member_stale_s=r.number("member_stale_s", d.member_stale_s, minimum=0.1, maximum=600),
        maximum_lag_on_failover=r.integer("maximum_lag_on_failover",
                                          d.maximum_lag_on_failover, minimum=0),
        acquire_retry_s=r.number("acquire_retry_s", d.acquire_retry_s, minimum=0.05,
                                 maximum=600),
        sync_set_retry_s=r.number("sync_set_retry_s", d.sync_set_retry_s, minimum=0.05,
                                  maximum=600),
        log_compaction_min_entries=r.integer("log_compaction_min_entries",
                                             d.log_compaction_min_entries, minimum=10,
                                             maximum=10_000_000),
        log_compaction_min_time_s=r.number("log_compaction_min_time_s",
                                           d.log_compaction_min_time_s, minimum=1,
                                           maximum=86_400),
    )
    if result.renew_interval_s >= result.lease_s * (1 - result.drift):
        raise r.fail(r.key("renew_interval_s"), "must be shorter than lease_s * (1 - drift)")
    if result.election_max_s <= result.election_min_s:
        raise r.fail(r.key("election_max_s"), "must be greater than election_min_s")
    if result.raft_heartbeat_s >= result.election_min_s:
        raise r.fail(r.key("raft_heartbeat_s"), "must be shorter than election_min_s")
    r.finish()
    return result


def _watchdog(r: _Reader) -> WatchdogConfig:
    d = WatchdogConfig()
    # YAML reads a bare `off` as false: take it as the mode it names.
    raw = r.get("mode", (str, bool), d.mode)
    mode = "off" if raw is False else raw
    if mode not in ("off", "automatic", "required"):  # `true` lands here too
        raise r.fail(r.key("mode"), f"must be off, automatic or required, not {brief(mode)}")
    result = WatchdogConfig(
        mode=mode, device=Path(_text(r, "device", str(d.device))),
        timeout_s=r.integer("timeout_s", d.timeout_s, minimum=1, maximum=600))
    r.finish()
    return result


def _limits(r: _Reader) -> LimitsConfig:
    d = LimitsConfig()
    result = LimitsConfig(
        max_key_bytes=r.integer("max_key_bytes", d.max_key_bytes, minimum=1, maximum=8 << 20),
        max_value_bytes=r.integer("max_value_bytes", d.max_value_bytes, minimum=0,
                                  maximum=1 << 30),
        max_body_bytes=r.integer("max_body_bytes", d.max_body_bytes, minimum=1024,
                                 maximum=1 << 31),
        max_batch_ops=r.integer("max_batch_ops", d.max_batch_ops, minimum=1),
    )
    r.finish()
    return result


def _nodes(top: _Reader, source: Path) -> tuple[NodeConfig, ...]:
    raw = top.get("nodes", list)
    if not raw:
        raise top.fail("nodes", "must list at least one node")
    nodes: list[NodeConfig] = []
    seen_names: set[str] = set()
    seen_addrs: dict[tuple[str, int], str] = {}
    for i, item in enumerate(raw):
        key = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise top.fail(key, "expected a mapping with name, api, data_dir")
        r = _Reader(source, item, key)
        name = _name(r, r.key("name"), r.get("name", str))
        if name in seen_names:
            raise r.fail(r.key("name"), f"duplicate node name {name!r}")
        seen_names.add(name)
        api = parse_address(r.get("api", str), source, r.key("api"))
        if (api.host, api.port) in seen_addrs:
            raise r.fail(r.key("api"), f"{api} is already used by {seen_addrs[api.host, api.port]}")
        seen_addrs[api.host, api.port] = name
        data_dir = Path(os.path.expanduser(_text(r, "data_dir")))
        if not data_dir.is_absolute():
            # Relative to the config file, so the example works from any working directory.
            data_dir = (source.parent / data_dir).resolve()
        raft = None
        if r.get("raft", str, None) is not None:
            raft = parse_address(r.get("raft", str), source, r.key("raft"))
            if (raft.host, raft.port) in seen_addrs:
                raise r.fail(r.key("raft"),
                             f"{raft} is already used by {seen_addrs[raft.host, raft.port]}")
            seen_addrs[raft.host, raft.port] = name
        tags = r.get("tags", list, [])
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or tag not in NODE_TAGS:
                raise r.fail(f"{r.key('tags')}[{i}]",
                             f"unknown tag {brief(tag)} (known: {', '.join(sorted(NODE_TAGS))})")
        r.finish()
        nodes.append(NodeConfig(name=name, api=api, data_dir=data_dir, raft=raft,
                                tags=frozenset(tags)))
    return tuple(nodes)

