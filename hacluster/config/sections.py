"""One function per section of the config file: its keys, their types, bounds and rules.

Owns ``_storage``, ``_replication``, ``_backup``, ``_consensus``, ``_watchdog``, ``_limits``,
``_hooks``, ``_application`` and ``_nodes``: each reads its section through a ``_Reader``,
checks every bound and every rule that involves only that section's keys, refuses unknown keys, and
returns the frozen dataclass. It must never look at another section or at the environment
(rules across sections, secrets and defaults that depend on consensus are ``load``'s), and
never start or open anything.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from urllib.parse import urlsplit

from hacluster.config.model import (
    DURABILITY,
    NODE_TAGS,
    SECRET_ENVS,
    ApplicationConfig,
    BackupConfig,
    ConfigError,
    ConsensusConfig,
    HooksConfig,
    LimitsConfig,
    NodeConfig,
    ReplicationConfig,
    StorageConfig,
    TlsConfig,
    WatchdogConfig,
)
from hacluster.config.reader import _name, _path, _Reader, _text, brief, parse_address
from hacluster.security.tokens import DIGEST_RE, ID_RE, Role, TokenEntry, digest


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


BACKUP_COMPRESSION = ("zstd", "gzip", "none")
BACKUP_ENCRYPTION = ("none", "client", "sse-s3", "sse-kms")


def _backup(r: _Reader) -> BackupConfig:
    """The ``backup`` section without its secrets (``load`` reads those, then finishes it)."""
    d = BackupConfig()
    url = _text(r, "url", None)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise r.fail(r.key("url"), f"{brief(url)}: names no bucket (s3://BUCKET/prefix)")
        elif parts.scheme == "file":
            if parts.netloc or not parts.path.startswith("/"):
                raise r.fail(r.key("url"), f"{brief(url)}: a file URL takes an absolute path "
                             "(file:///var/backups/hacluster)")
        else:
            raise r.fail(r.key("url"), f"{brief(url)}: must be s3://bucket/prefix or "
                         "file:///path")
    endpoint = _text(r, "endpoint_url", None)
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise r.fail(r.key("endpoint_url"), f"{brief(endpoint)}: must be an http(s) URL")
    # Already-read secrets pass through when a built config is parsed again (the dynamic
    # configuration lays Raft's values over the file's section): never drop them there.
    carried_key = r.data.get("encryption_key")
    carried_secret = r.data.get("secret_access_key")
    result = BackupConfig(
        url=url,
        encryption_key=carried_key if isinstance(carried_key, bytes) else None,
        secret_access_key=carried_secret if isinstance(carried_secret, str) else None,
        archive_interval_s=r.number("archive_interval_s", d.archive_interval_s, minimum=0.1,
                                    maximum=3600),
        base_backup_interval_s=r.number("base_backup_interval_s", d.base_backup_interval_s,
                                        minimum=0, maximum=366 * 86400),
        keep_last=r.integer("keep_last", d.keep_last, minimum=1, maximum=10_000),
        keep_days=r.number("keep_days", d.keep_days, minimum=0, maximum=36_500),
        compression=r.get("compression", str, d.compression),
        encryption=r.get("encryption", str, d.encryption),
        kms_key_id=r.get("kms_key_id", str, None),
        endpoint_url=endpoint,
        region=r.get("region", str, None),
        access_key_id=r.get("access_key_id", str, None),
        segment_max_mb=r.integer("segment_max_mb", d.segment_max_mb, minimum=1, maximum=1024),
        max_pending_mb=r.integer("max_pending_mb", d.max_pending_mb, minimum=1,
                                 maximum=1 << 16),
    )
    if result.compression not in BACKUP_COMPRESSION:
        raise r.fail(r.key("compression"), f"must be one of {', '.join(BACKUP_COMPRESSION)}, "
                     f"got {brief(result.compression)}")
    if result.encryption not in BACKUP_ENCRYPTION:
        raise r.fail(r.key("encryption"), f"must be one of {', '.join(BACKUP_ENCRYPTION)}, "
                     f"got {brief(result.encryption)}")
    if result.encryption == "sse-kms" and not result.kms_key_id:
        raise r.fail(r.key("kms_key_id"), "required with encryption: sse-kms")
    if result.kms_key_id and result.encryption != "sse-kms":
        raise r.fail(r.key("kms_key_id"), "only used with encryption: sse-kms")
    s3 = url is not None and url.startswith("s3:")
    if result.encryption in ("sse-s3", "sse-kms") and not s3:
        raise r.fail(r.key("encryption"), f"{result.encryption} is server-side encryption: "
                     "it needs an s3:// url (use client for a file:// url)")
    if result.segment_max_mb > result.max_pending_mb:
        raise r.fail(r.key("segment_max_mb"), "must not exceed max_pending_mb")
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
        max_watches=r.integer("max_watches", d.max_watches, minimum=0, maximum=100_000),
        watch_send_timeout_s=r.number("watch_send_timeout_s", d.watch_send_timeout_s,
                                      minimum=0.1, maximum=3600.0),
    )
    r.finish()
    return result


def _hooks(r: _Reader) -> HooksConfig:
    result = HooksConfig(
        on_promote=_text(r, "on_promote", None),
        on_demote=_text(r, "on_demote", None),
        on_role_change=_text(r, "on_role_change", None),
        timeout_s=r.number("timeout_s", HooksConfig().timeout_s, minimum=0.1, maximum=3600))
    r.finish()
    return result


def _command(r: _Reader, name: str, required: bool = False) -> tuple[str, ...] | None:
    """A command as an argv list, or as one string split like a shell would (no shell runs)."""
    raw = r.get(name, (str, list), ... if required else None)
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            raise r.fail(r.key(name), f"cannot be split into arguments: {exc}") from None
    else:
        argv = raw
        for i, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise r.fail(f"{r.key(name)}[{i}]", f"expected a string, got {brief(arg)}")
    if not argv or not argv[0]:
        raise r.fail(r.key(name), "must name a program to run")
    if any("\0" in a for a in argv):
        raise r.fail(r.key(name), "must not contain a NUL character")
    return tuple(argv)


def _application(r: _Reader) -> ApplicationConfig | None:
    if not r.data:
        r.finish()
        return None
    d = ApplicationConfig(db_path=Path(), primary_command=())
    db_path = _path(r, "db_path")
    primary = _command(r, "primary_command", required=True)
    assert primary is not None
    stop = r.get("stop_signal", str, d.stop_signal).upper()
    if not stop.startswith("SIG"):
        stop = "SIG" + stop
    if stop not in signal.Signals.__members__ or stop in ("SIGKILL", "SIGSTOP"):
        raise r.fail(r.key("stop_signal"), f"{brief(stop)} is not a signal a service can be "
                     "asked to stop with (e.g. SIGTERM, SIGINT, SIGQUIT)")
    health_url = _text(r, "health_url", None)
    if health_url is not None:
        parts = urlsplit(health_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise r.fail(r.key("health_url"), f"must be an http(s) URL, got {brief(health_url)}")
    health_command = _command(r, "health_command")
    if health_url and health_command:
        raise r.fail(r.key("health_command"), "give health_url or health_command, not both")
    env_raw = r.get("env", dict, {})
    env: list[tuple[str, str]] = []
    for key, value in env_raw.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise r.fail(f"{r.key('env')}", f"bad variable name {brief(key)}")
        if key.startswith("HACLUSTER_") or key in SECRET_ENVS:
            raise r.fail(f"{r.key('env')}.{key}", "HACLUSTER_* names are set by hacluster "
                         "(role, epoch, node, URLs) and secrets are never passed on")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise r.fail(f"{r.key('env')}.{key}", f"expected a string, got {brief(value)}")
        env.append((key, str(value)))
    cwd = r.get("cwd", str, None)
    log_file = r.get("log_file", str, None)
    result = ApplicationConfig(
        db_path=db_path,
        primary_command=primary,
        replica_command=_command(r, "replica_command"),
        stop_signal=stop,
        stop_timeout_s=r.number("stop_timeout_s", d.stop_timeout_s, minimum=0.1, maximum=3600),
        start_timeout_s=r.number("start_timeout_s", d.start_timeout_s, minimum=0.1,
                                 maximum=3600),
        health_url=health_url,
        health_command=health_command,
        health_interval_s=r.number("health_interval_s", d.health_interval_s, minimum=0.05,
                                   maximum=600),
        env=tuple(env),
        cwd=_path(r, "cwd", cwd) if cwd is not None else None,
        log_file=_path(r, "log_file", log_file) if log_file is not None else None,
        max_restarts=r.integer("max_restarts", d.max_restarts, minimum=0, maximum=1000),
        restart_window_s=r.number("restart_window_s", d.restart_window_s, minimum=1,
                                  maximum=86400),
        poll_interval_ms=r.number("poll_interval_ms", d.poll_interval_ms, minimum=1,
                                  maximum=1000),
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
        data_dir = _path(r, "data_dir")
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


def _tls(top: _Reader) -> TlsConfig:
    """``tls: off`` (plain HTTP, said out loud) or the certificate, key and cluster CA."""
    top.seen.add("tls")
    raw = top.data.get("tls", ...)
    if raw is ... or raw is None:
        raise top.fail("tls", "required: cert_file, key_file and ca_file, or `tls: off` for "
                              "plain HTTP (loopback demos only: tokens and data would cross "
                              "the network in the clear)")
    if raw is False or raw == "off":        # YAML 1.1 reads a bare `off` as false
        return TlsConfig(enabled=False)
    if not isinstance(raw, dict):
        raise top.fail("tls", f"expected a mapping or `off`, got {brief(raw)}")
    r = top.child("tls")
    result = TlsConfig(enabled=True, cert_file=_path(r, "cert_file"),
                       key_file=_path(r, "key_file"), ca_file=_path(r, "ca_file"),
                       peer_client_auth=r.get("peer_client_auth", bool, False))
    r.finish()
    return result


def _token_entries(r: _Reader) -> tuple[TokenEntry, ...]:
    raw = r.get("tokens", list, [])
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    roles = ", ".join(role.value for role in Role)
    for i, item in enumerate(raw):
        key = f"{r.key('tokens')}[{i}]"
        if not isinstance(item, dict):
            raise r.fail(key, "expected a mapping with id, role, sha256 (made by `hacluster "
                              "token new --role ROLE`)")
        e = _Reader(r.source, item, key)
        token_id, role, sha = e.get("id", str), e.get("role", str), e.get("sha256", str)
        if not ID_RE.match(token_id):
            raise e.fail(e.key("id"), f"expected 8 hex digits, got {brief(token_id)}")
        if token_id in seen:
            raise e.fail(e.key("id"), f"duplicate token id {token_id}")
        seen.add(token_id)
        if role not in {x.value for x in Role}:
            raise e.fail(e.key("role"), f"must be one of {roles}, got {brief(role)}")
        if not DIGEST_RE.match(sha):
            raise e.fail(e.key("sha256"), "expected the token's SHA-256 as 64 lowercase hex "
                                          "digits (the token itself never goes in the config)")
        name = e.get("name", str, "")
        if name:
            _name(e, e.key("name"), name)
        e.finish()
        entries.append(TokenEntry(token_id, Role(role), sha, name))
    return tuple(entries)


def _auth_tokens(top: _Reader) -> tuple[_Reader, tuple[TokenEntry, ...]]:
    """The ``auth`` section's reader (its secret is read by ``load``) and its token entries."""
    r = top.child("auth")
    return r, _token_entries(r)


def _check_auth(source: Path, entries: tuple[TokenEntry, ...], legacy: str | None,
                own: str | None, tls: TlsConfig) -> None:
    """Rules across ``cluster``, ``auth`` and ``tls``: someone can log in, and the nodes can
    reach each other's replication routes."""
    if not entries and legacy is None:
        raise ConfigError(f"{source}: auth.tokens: no credential configured: add role tokens "
                          "(`hacluster token new --role ROLE`) or set cluster.token")
    replication = [e for e in entries if e.role is Role.REPLICATION]
    if own is not None:
        if entries and digest(own) not in {e.sha256 for e in replication}:
            raise ConfigError(f"{source}: auth.replication_token: matches no token of role "
                              "replication in auth.tokens")
    elif entries and legacy is None and not tls.peer_client_auth:
        raise ConfigError(f"{source}: auth.replication_token: required (a file in "
                          "auth.replication_token_file, $HACLUSTER_REPLICATION_TOKEN or the "
                          "credential replication_token): nodes need it to reach the "
                          "primary's replication routes, unless tls.peer_client_auth is on")
    if tls.peer_client_auth and not tls.enabled:
        raise ConfigError(f"{source}: tls.peer_client_auth needs TLS")
