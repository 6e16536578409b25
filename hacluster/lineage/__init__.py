"""Where this node's data came from, and what happens to data off the cluster's history:
``labels`` (the epochs that wrote each range of seqs, checked against Raft's epoch history)
and ``tails`` (divergent tails saved to files, and old databases set aside)."""
