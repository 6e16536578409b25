"""Cluster configuration: load a YAML file, validate every key up front, return frozen dataclasses.

Owns the schema (every key, its type, its default) and the error messages that name the file and
the key. It must never start anything, open a database, or touch the network: a bad config fails
before any of that happens. Secrets may come from the environment (``HACLUSTER_TOKEN``,
``HACLUSTER_RAFT_PASSWORD``), which override the file.

The package re-exports everything its modules define, so ``hacluster.config`` is the one import
path: ``model`` (the frozen dataclasses, defaults and shared constants), ``reader`` (one key at a
time, errors naming file and key), ``yaml_loader`` (bounded YAML parsing), ``sections`` (one
function per section) and ``load`` (``load_config``, secrets, rules across sections).
"""

from __future__ import annotations

from hacluster.config.load import _MAX_CONFIG_BYTES as _MAX_CONFIG_BYTES
from hacluster.config.load import _build as _build
from hacluster.config.load import load_config
from hacluster.config.model import (
    DURABILITY,
    FRAME_OVERHEAD,
    NODE_TAGS,
    RAFT_PASSWORD_ENV,
    REPLICATION_TOKEN_ENV,
    SECRET_ENVS,
    TOKEN_ENV,
    Address,
    ApplicationConfig,
    AuthConfig,
    ClusterConfig,
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
from hacluster.config.reader import _INT_MAX as _INT_MAX
from hacluster.config.reader import _NAME_RE as _NAME_RE
from hacluster.config.reader import _SURROGATE as _SURROGATE
from hacluster.config.reader import _brief as _brief
from hacluster.config.reader import _kind_name as _kind_name
from hacluster.config.reader import _name as _name
from hacluster.config.reader import _Reader as _Reader
from hacluster.config.reader import _text as _text
from hacluster.config.reader import brief, parse_address
from hacluster.config.sections import _consensus as _consensus
from hacluster.config.sections import _hooks as _hooks
from hacluster.config.sections import _limits as _limits
from hacluster.config.sections import _nodes as _nodes
from hacluster.config.sections import _replication as _replication
from hacluster.config.sections import _storage as _storage
from hacluster.config.sections import _watchdog as _watchdog
from hacluster.config.yaml_loader import _YAML_MAX_DEPTH as _YAML_MAX_DEPTH
from hacluster.config.yaml_loader import _YAML_MAX_NODES as _YAML_MAX_NODES
from hacluster.config.yaml_loader import _check_expansion as _check_expansion
from hacluster.config.yaml_loader import _Loader as _Loader

__all__ = [
    "DURABILITY",
    "FRAME_OVERHEAD",
    "NODE_TAGS",
    "RAFT_PASSWORD_ENV",
    "REPLICATION_TOKEN_ENV",
    "SECRET_ENVS",
    "TOKEN_ENV",
    "Address",
    "ApplicationConfig",
    "AuthConfig",
    "ClusterConfig",
    "ConfigError",
    "ConsensusConfig",
    "HooksConfig",
    "LimitsConfig",
    "NodeConfig",
    "ReplicationConfig",
    "StorageConfig",
    "TlsConfig",
    "WatchdogConfig",
    "brief",
    "load_config",
    "parse_address",
]
