"""Loading a config file: read it, parse it, build every section, then check the whole.

Owns ``load_config`` (bounded read, UTF-8 and YAML errors with their position), the ``cluster``
section and ``column_families``, the secrets that the environment overrides
(``HACLUSTER_TOKEN``, ``HACLUSTER_RAFT_PASSWORD``), and the rules across sections: static or
consensus mode, the replication mode's default, a request body fitting in a frame, the primary
being one of the nodes, the watchdog needing consensus. It must never start anything, open a
database or touch the network: a bad config fails before any of that happens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from hacluster.config.model import (
    FRAME_OVERHEAD,
    RAFT_PASSWORD_ENV,
    TOKEN_ENV,
    ClusterConfig,
    ConfigError,
)
from hacluster.config.reader import _SURROGATE, _name, _Reader, brief
from hacluster.config.sections import (
    _consensus,
    _hooks,
    _limits,
    _nodes,
    _replication,
    _storage,
    _watchdog,
)
from hacluster.config.yaml_loader import _Loader

_MAX_CONFIG_BYTES = 1 << 20


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
    hooks = _hooks(top.child("hooks"))
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
