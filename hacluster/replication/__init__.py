"""Replication data plane: frames, the primary's stream, the replica's follower, bootstrap."""
