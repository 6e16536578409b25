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


def quorum_window(cfg: Config) -> float:
    """How recent a commit of this node's must be for it to count on a quorum."""
    c = cfg.consensus
    return max(3 * c.report_interval_s, 3 * c.renew_interval_s)


def unsafe_change(old: Config, new: Config) -> str | None:
    """Why a dynamic change from ``old`` to ``new`` is refused although both validate.

    A lease that a Raft election outlasts would stop writes at every Raft leader change
    (no renewal commits while Raft has no leader): refused, naming the keys. Checked only
    when the change touches the lease timings, so a file that already breaks it does not
    block every other change.
    """
    o, n = old.consensus, new.consensus
    if (o.lease_s, o.renew_interval_s) == (n.lease_s, n.renew_interval_s):
        return None
    needed = n.election_max_s + n.renew_interval_s
    if n.lease_s * (1 - n.drift) < needed:
        return (f"consensus.lease_s: {n.lease_s} s (less drift: {n.lease_s * (1 - n.drift):.3f}"
                f" s) is shorter than a Raft election (election_max_s {n.election_max_s} s) "
                f"plus one renewal (renew_interval_s {n.renew_interval_s} s): every Raft "
                "leader change would stop writes")
    return None

