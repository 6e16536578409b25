"""Every consensus timing and rule setting, derived from the one configuration.

Owns the translation of ``Config`` (``consensus.*`` and the replication keys the rules read)
into the typed settings of each part — ``LeaseTiming`` for the lease arithmetic, ``Policy`` for
``decide``, ``RaftTiming`` for pysyncobj — so that a timing is defined once, in the config's
defaults, and every part reads the same value. It must never hold a default of its own.
"""

from __future__ import annotations

from hacluster.config import ClusterConfig as Config
from hacluster.consensus.lease import LeaseTiming
from hacluster.consensus.model import Policy
from hacluster.consensus.raft import RaftTiming


def lease_timing(cfg: Config) -> LeaseTiming:
    c = cfg.consensus
    return LeaseTiming(c.lease_s, c.renew_interval_s, c.drift, c.drift_margin_s)


def policy(cfg: Config) -> Policy:
    c, r = cfg.consensus, cfg.replication
    return Policy(timing=lease_timing(cfg), sync_mode=r.mode == "sync",
                  maximum_lag_on_failover=c.maximum_lag_on_failover,
                  member_stale_s=c.member_stale_s, acquire_retry_s=c.acquire_retry_s,
                  sync_set_retry_s=c.sync_set_retry_s, sync_replicas=r.sync_replicas,
                  sync_stall_s=min(1.0, r.sync_timeout_s / 2))


def raft_timing(cfg: Config) -> RaftTiming:
    c = cfg.consensus
    return RaftTiming(election_min_s=c.election_min_s, election_max_s=c.election_max_s,
                      heartbeat_s=c.raft_heartbeat_s,
                      compaction_min_entries=c.log_compaction_min_entries,
                      compaction_min_time_s=c.log_compaction_min_time_s)
