"""Consensus: the replicated cluster state (Raft via pysyncobj), leases, failover decisions."""
