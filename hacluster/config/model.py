"""The config's schema as data: the frozen dataclasses, their defaults, and the shared constants.

Owns ``ClusterConfig`` and one frozen dataclass per section (``StorageConfig``,
``ReplicationConfig``, ``ConsensusConfig``, ...), each field's default, ``ConfigError``, and the
names other modules share (``TOKEN_ENV``, ``RAFT_PASSWORD_ENV``, ``FRAME_OVERHEAD``,
``NODE_TAGS``, ``DURABILITY``, ``BACKUP_KEY_ENV``). It must never read a file, the environment
or a YAML value, nor check a bound: the defaults live here, the validation in ``sections``
and ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hacluster.security.tokens import TokenEntry

TOKEN_ENV = "HACLUSTER_TOKEN"
RAFT_PASSWORD_ENV = "HACLUSTER_RAFT_PASSWORD"
REPLICATION_TOKEN_ENV = "HACLUSTER_REPLICATION_TOKEN"
RAFT_PASSWORD_ALSO_ENV = "HACLUSTER_RAFT_PASSWORD_ALSO_ACCEPTED"
# systemd's LoadCredential=/SetCredentialEncrypted= put secrets in files under this directory.
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Never passed on to a child process (hooks): each holds a secret, or says where secrets are.
BACKUP_KEY_ENV = "HACLUSTER_BACKUP_ENCRYPTION_KEY"
BACKUP_SECRET_ACCESS_KEY_ENV = "HACLUSTER_BACKUP_SECRET_ACCESS_KEY"
SECRET_ENVS = frozenset({TOKEN_ENV, RAFT_PASSWORD_ENV, RAFT_PASSWORD_ALSO_ENV,
                         REPLICATION_TOKEN_ENV, CREDENTIALS_ENV, BACKUP_KEY_ENV,
                         BACKUP_SECRET_ACCESS_KEY_ENV})

NODE_TAGS = frozenset({"nofailover", "noloadbalance"})
# Room in a frame beyond the WriteBatch itself (CBOR map, header fields, checksum).
FRAME_OVERHEAD = 4096
DURABILITY = ("fsync", "os_buffer")


class ConfigError(Exception):
    """A config file is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    scheme: str = "http"          # an API address is https when the cluster has TLS

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


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
class ApplicationConfig:
    """Managed mode: a service that embeds RocksDB itself runs as the writer on the primary,
    optionally read-only on replicas, and nowhere else; hacluster replicates its database."""

    db_path: Path                            # the service's RocksDB directory; may hold {node}
    primary_command: tuple[str, ...]         # argv; {node} replaced by the node's name
    replica_command: tuple[str, ...] | None = None   # read-only (a RocksDB secondary instance)
    stop_signal: str = "SIGTERM"
    stop_timeout_s: float = 10.0             # then SIGKILL (on a lost lease: see fence_grace_s)
    start_timeout_s: float = 30.0            # health must pass within this long after a start
    health_url: str | None = None            # 2xx = healthy
    health_command: tuple[str, ...] | None = None    # exit 0 = healthy
    health_interval_s: float = 1.0
    env: tuple[tuple[str, str], ...] = ()    # given to the service, besides HACLUSTER_* names
    cwd: Path | None = None
    log_file: Path | None = None             # the service's stdout and stderr; may hold {node}
    max_restarts: int = 3                    # exits on the primary within restart_window_s,
    restart_window_s: float = 60.0           # then the lock is released to another node
    poll_interval_ms: float = 5.0            # how often the primary looks for new WAL records

    def db_path_for(self, node: str) -> Path:
        return Path(str(self.db_path).replace("{node}", node))

    def command_for(self, role: str, node: str) -> tuple[str, ...] | None:
        argv = self.primary_command if role == "primary" else self.replica_command
        return tuple(a.replace("{node}", node) for a in argv) if argv else None

    def log_file_for(self, node: str) -> Path | None:
        return Path(str(self.log_file).replace("{node}", node)) if self.log_file else None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_key_bytes: int = 64 << 10
    max_value_bytes: int = 16 << 20
    max_body_bytes: int = 64 << 20
    max_batch_ops: int = 100_000
    # Watches a node serves at once (each holds at most one bounded WAL read), and how long a
    # watcher's socket may take nothing before the watch is cut (the client stopped reading).
    max_watches: int = 256
    watch_send_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS on every HTTP listener and between nodes; ``enabled`` False only for ``tls: off``."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # The WAL stream, checkpoints and acks accept only a client certificate signed by the
    # cluster CA, naming the replica the request claims to be.
    peer_client_auth: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    def for_node(self, name: str) -> TlsConfig:
        """With ``{node}`` in the certificate and key paths replaced by ``name``: one config
        file can serve nodes that keep their certificates side by side."""
        def sub(path: Path | None) -> Path | None:
            return Path(str(path).replace("{node}", name)) if path is not None else None
        return TlsConfig(self.enabled, sub(self.cert_file), sub(self.key_file), self.ca_file,
                         self.peer_client_auth)


@dataclass(frozen=True, slots=True)
class BackupConfig:
    """Continuous backup to an object store (``url`` None: off). The schedule keys
    (``archive_interval_s``, ``base_backup_interval_s``, ``keep_last``, ``keep_days``) are
    dynamic: read them from ``node.cfg.backup`` where they are used, never keep a copy."""

    url: str | None = None                   # s3://bucket/prefix or file:///path
    archive_interval_s: float = 5.0          # the live tail ships at least this often
    base_backup_interval_s: float = 86400.0  # 0: base backups on demand only
    keep_last: int = 7                       # base backups kept whatever their age ...
    keep_days: float = 7.0                   # ... and every one younger than this
    compression: str = "zstd"                # zstd | gzip | none
    encryption: str = "none"                 # none | client | sse-s3 | sse-kms
    encryption_key: bytes | None = field(default=None, repr=False)   # client: 32 bytes
    kms_key_id: str | None = None            # sse-kms
    endpoint_url: str | None = None          # an S3-compatible server's URL
    region: str | None = None
    access_key_id: str | None = None         # else boto3's chain (env, profile, role)
    secret_access_key: str | None = field(default=None, repr=False)
    segment_max_mb: int = 16                 # a WAL segment object holds at most this much
    max_pending_mb: int = 64                 # read ahead of the store at most this much

    @property
    def enabled(self) -> bool:
        return self.url is not None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Role tokens (stored as hashes) and this node's own credential towards the primary."""

    tokens: tuple[TokenEntry, ...] = ()
    replication_token: str | None = None    # secret: from a file, a credential or the env


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole validated config; ``source`` is the file it came from."""

    name: str
    token: str | None           # the legacy shared token: every role (deprecated)
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
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    # A second Raft password, accepted but never sent: the middle steps of a rolling change.
    raft_password_also_accepted: str | None = None
    application: ApplicationConfig | None = None    # managed mode when set
    backup: BackupConfig = BackupConfig()

    @property
    def managed(self) -> bool:
        """Managed mode: the service owns the database; hacluster never writes it as primary."""
        return self.application is not None

    @property
    def peer_token(self) -> str | None:
        """What this node sends to the primary's replication routes (None: its certificate
        is its credential)."""
        return self.auth.replication_token or self.token

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
