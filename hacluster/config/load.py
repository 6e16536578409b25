"""Loading a config file: read it, parse it, build every section, then check the whole.

Owns ``load_config`` (bounded read, UTF-8 and YAML errors with their position), the ``cluster``
section and ``column_families``, the secrets (``secret_sources``: the environment, files, systemd
credentials), and the rules across sections: static or
consensus mode, the replication mode's default, a request body fitting in a frame, the primary
being one of the nodes, the watchdog and managed mode needing consensus. It must never start
anything, open a database or touch the network: a bad config fails before any of that happens.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from hacluster.config.model import (
    BACKUP_KEY_ENV,
    BACKUP_SECRET_ACCESS_KEY_ENV,
    FRAME_OVERHEAD,
    RAFT_PASSWORD_ALSO_ENV,
    RAFT_PASSWORD_ENV,
    REPLICATION_TOKEN_ENV,
    TOKEN_ENV,
    AuthConfig,
    BackupConfig,
    ClusterConfig,
    ConfigError,
)
from hacluster.config.reader import _name, _Reader, brief
from hacluster.config.secret_sources import read_secret
from hacluster.config.sections import (
    _application,
    _auth_tokens,
    _backup,
    _check_auth,
    _consensus,
    _hooks,
    _limits,
    _nodes,
    _replication,
    _storage,
    _tls,
    _watchdog,
)
from hacluster.config.yaml_loader import _Loader
from hacluster.security.tokens import TOKEN_RE

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
    if TOKEN_RE.match(env.get(TOKEN_ENV, "")):
        # A role token in $HACLUSTER_TOKEN is a tool's credential (hacluster ctl, the client),
        # never a node's shared token: it would grant its holder every role.
        env = {k: v for k, v in env.items() if k != TOKEN_ENV}
    # The legacy shared token (every role): still accepted, warned about at start.
    token = read_secret(cluster, "token", env=env, env_name=TOKEN_ENV, credential="token")
    if token is not None and TOKEN_RE.match(token):
        raise cluster.fail("cluster.token", "is a role token (hct_...): role tokens go in "
                           "auth.tokens, as the entries `hacluster token new` prints")
    raft_password = read_secret(cluster, "raft_password", env=env, env_name=RAFT_PASSWORD_ENV,
                                credential="raft_password")
    also = read_secret(cluster, "raft_password_also_accepted", env=env,
                       env_name=RAFT_PASSWORD_ALSO_ENV, credential="raft_password_also_accepted")
    if also is not None and raft_password is None:
        raise cluster.fail("cluster.raft_password_also_accepted", "needs cluster.raft_password "
                           "(the one the node sends)")
    primary = cluster.get("primary", str, "")
    epoch = cluster.integer("epoch", 1, minimum=1)
    cluster.finish()

    cfs_raw = top.get("column_families", list, ["default"])
    cfs: list[str] = []
    for i, cf in enumerate(cfs_raw):
        cf_name = _name(top, f"column_families[{i}]", cf)
        if cf_name.startswith("_hacluster"):
            raise top.fail(f"column_families[{i}]", f"{cf_name!r}: names starting with "
                           "'_hacluster' are kept for hacluster's own column families")
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
    application = _application(top.child("application"))
    backup = _backup_with_secrets(top.child("backup"), env)
    tls = _tls(top)
    auth_reader, entries = _auth_tokens(top)
    own = read_secret(auth_reader, "replication_token", env=env,
                      env_name=REPLICATION_TOKEN_ENV, credential="replication_token")
    auth_reader.finish()
    _check_auth(source, entries, token, own, tls)
    nodes = _nodes(top, source)
    if tls.enabled:
        nodes = tuple(dataclasses.replace(n, api=dataclasses.replace(n.api, scheme="https"))
                      for n in nodes)
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
    if application is not None:
        if not with_raft:
            raise ConfigError(f"{source}: application: managed mode needs consensus (raft "
                              "addresses on every node): the service runs where the lock is")
        if len(nodes) > 1 and "{node}" not in str(application.db_path) and len(
                {n.api.host for n in nodes}) < len(nodes):
            raise ConfigError(
                f"{source}: application.db_path: {application.db_path} is shared by nodes on "
                "one host: put {node} in it so each node has its own database")
    return ClusterConfig(
        name=name, token=token, raft_password=raft_password, primary=primary, epoch=epoch,
        column_families=tuple(cfs),
        nodes=nodes, storage=storage, replication=replication, limits=limits, source=source,
        consensus=consensus, hooks=hooks, watchdog=watchdog, tls=tls,
        auth=AuthConfig(tokens=entries, replication_token=own),
        raft_password_also_accepted=also if also != raft_password else None,
        application=application, backup=backup,
    )


def _backup_key(r: _Reader, where: str, text: str) -> bytes:
    """A client-side encryption key: 32 bytes, as 64 hex digits or in base64."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            raise r.fail(where, "must be 32 bytes as 64 hex digits or base64 (make one with "
                         "`openssl rand -hex 32`)") from None
    if len(key) != 32:
        raise r.fail(where, f"must be 32 bytes (AES-256), got {len(key)} (make one with "
                     "`openssl rand -hex 32`)")
    return key


def _backup_with_secrets(r: _Reader, env: Mapping[str, str]) -> BackupConfig:
    """The ``backup`` section, its encryption key and S3 secret from the file, a secret file,
    a systemd credential or the environment."""
    backup = _backup(r)
    key_text = read_secret(r, "encryption_key", env=env, env_name=BACKUP_KEY_ENV,
                           credential="backup_encryption_key", min_length=32)
    secret = read_secret(r, "secret_access_key", env=env,
                         env_name=BACKUP_SECRET_ACCESS_KEY_ENV,
                         credential="backup_secret_access_key", min_length=8)
    r.finish()
    key = None
    if backup.encryption == "client":
        if key_text is None:
            raise r.fail(r.key("encryption_key"), "required with encryption: client (in "
                         f"encryption_key_file, ${BACKUP_KEY_ENV} or the credential "
                         "backup_encryption_key)")
        key = _backup_key(r, r.key("encryption_key"), key_text)
    elif key_text is not None and ("encryption_key" in r.data or "encryption_key_file" in r.data):
        raise r.fail(r.key("encryption_key"), "only used with encryption: client")
    if (secret is None) != (backup.access_key_id is None):
        raise r.fail(r.key("secret_access_key" if secret is None else "access_key_id"),
                     "access_key_id and secret_access_key go together (or leave both out "
                     "for boto3's usual chain: environment, profile, instance role)")
    if backup.url is None and (backup.encryption != "none" or backup.endpoint_url):
        raise r.fail(r.key("url"), "required when the backup section sets anything else")
    return dataclasses.replace(backup, encryption_key=key, secret_access_key=secret)
