"""The synchronous set's proposals, and what a write must wait for while one is undecided.

Owns rule 6 on the proposing side: ``_propose_sync_set`` records the set the effects chose
(``effects.sync_set_change``) in Raft, and until its outcome is known every name proposed
since counts as a confirmer (``confirmers``), so a write is never acknowledged by a set that
may not be the committed one. Mixed into ``ControlLoop``. It must never drop a proposed name
from the confirmers before a later proposal of this node has an outcome.
"""

from __future__ import annotations

import logging
import time

from hacluster.consensus.ports import NodePort
from hacluster.consensus.raft import RaftNode
from hacluster.consensus.state import ClusterState, SetSyncSet

log = logging.getLogger("hacluster.consensus.loop")


class SyncSetProposals:
    """Mixed into ``ControlLoop``; these are the attributes it provides."""

    node: NodePort
    raft: RaftNode
    # Rule 6: names of every synchronous set proposed whose outcome is not known yet.
    # Until it is, a write needs them as well as the committed set.
    _sync_pending: frozenset[str] = frozenset()
    _sync_unknown = False
    _sync_proposed_at = 0.0

    def confirmers(self, state: ClusterState) -> frozenset[str]:
        """Whose confirmation a write needs: the committed synchronous set and, while a change
        of it may still commit, every set proposed since (rule 6)."""
        return state.sync_set | self._sync_pending

    def _propose_sync_set(self, epoch: int, new: frozenset[str]) -> None:
        """Propose ``new`` as the synchronous set (chosen by ``effects.sync_set_change``);
        until its outcome is known, writes need its members too (rule 6)."""
        node = self.node
        self._sync_pending = self._sync_pending | new
        self._sync_unknown = False
        self._sync_proposed_at = time.monotonic()
        latest = node.latest_seq()

        def done(ok: bool | None, proposed_at: float) -> None:
            if ok is None:
                # Not committed, yet it still may be: keep requiring its members. A later
                # proposal whose outcome is known ends the doubt (the log is ordered: once a
                # later entry of ours commits, this one has committed or never will).
                log.warning("%s: synchronous set change to %s: outcome unknown; writes need "
                            "both sets until a later change settles it", node.name,
                            sorted(new))
                self._sync_unknown = True
                return
            self._sync_pending = frozenset()
            self._sync_unknown = False
            if ok:
                log.info("%s: synchronous set is now %s (epoch %d, at seq %d)", node.name,
                         sorted(new), epoch, latest)

        self.raft.propose(SetSyncSet(node.name, epoch, new), done)
