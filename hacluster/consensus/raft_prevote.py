"""Raft's pre-vote (Ongaro's thesis, 9.6): a node asks before it starts an election.

A node cut off from the others (its host vanished, its cable pulled, its inbound traffic
dropped) keeps timing out and, in plain Raft, starts election after election, raising its term
each time. When it comes back, its higher term makes the working leader step down: a needless
election, in which no renewal of the primary's lease commits, often long enough for that lease
to lapse and for another failover to follow (measured: 2 of 8 heals of an isolated primary).
With pre-vote a node whose election timer fires first asks the others whether they would vote
for it in the next term, without changing any term or vote; it starts the real election only
once a majority (itself included) said yes. A node says yes only if it has not heard from a
leader for the minimum election timeout and the asker's log is at least as up to date as its
own. A node that is cut off gets no answers, so its term stays where it was, and its return
disturbs nobody.

A node whose term is above the leader's all the same (raised before pre-vote, or by an
election that failed) could never rejoin: pysyncobj ignores append-entries of a lower term
without a word, and the others, hearing their leader, refuse its pre-votes. So, as etcd does,
it tells such a leader its term (a vote request in its current term, to that leader only, at
most once per minimum election timeout): the leader steps down and the next election, in a
term above both, brings everyone together again.

Owns the pre-vote bookkeeping of one node (``PreVote``, kept on pysyncobj's transport: an
attribute on the SyncObj would be pickled into its dump) and the answer (``may_grant``, pure).
``raft_journal`` applies the patch to pysyncobj's tick and message handling. Pre-vote only
decides when a node may *start* an election; the election itself (terms, votes, logs) is
pysyncobj's, unchanged, so Raft's safety does not depend on it. A leadership transfer
(``timeout_now``) skips it: the leader asked for the election.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRE_VOTE = "hacluster_pre_vote"
PRE_VOTE_RESPONSE = "hacluster_pre_vote_response"
# While too few peers have ever spoken pre-vote to make a majority (a rolling upgrade from a
# build without it), and rounds go unanswered this long, elect without asking, as before. A
# node cut off is not connected to anyone after pysyncobj's connection timeout (1.5 s), and
# one that heard pre-votes from a majority before never does.
SILENT_PEERS_S = 5.0


@dataclass
class PreVote:
    term: int | None = None                  # the term asked about in the current round
    grants: set[Any] = field(default_factory=set)
    allowed: bool = False                    # a majority said yes: the next tick elects
    leader_heard_at: float | None = None     # when a leader's append-entries last came
    rounds: int = 0                          # pre-vote rounds started (for status and tests)
    elections: int = 0                       # rounds that won a majority
    unanswered_since: float | None = None    # rounds asked since then got no answer at all
    speakers: set[Any] = field(default_factory=set)    # peers that ever spoke pre-vote
    noticed: dict[Any, float] = field(default_factory=dict)  # lower-term leader -> told at

    def start(self, term: int, me: Any, now: float) -> None:
        self.term = term
        self.grants = {me}
        self.allowed = False
        self.rounds += 1
        if self.unanswered_since is None:
            self.unanswered_since = now

    def answered(self) -> None:
        self.unanswered_since = None

    def spoke(self, node: Any) -> None:
        self.speakers.add(node)
        self.unanswered_since = None

    def peers_silent(self, now: float, voters: int) -> bool:
        """Too few peers speak pre-vote to ever make a majority, and connected peers have
        answered nothing for ``SILENT_PEERS_S``: they run a build without it."""
        return (len(self.speakers) + 1 <= voters / 2 and self.unanswered_since is not None
                and now - self.unanswered_since >= SILENT_PEERS_S)

    def notice_due(self, leader: Any, now: float, every_s: float) -> bool:
        """Tell ``leader`` (of a lower term) about our term now? At most every ``every_s``."""
        if now - self.noticed.get(leader, float("-inf")) < every_s:
            return False
        self.noticed[leader] = now
        return True

    def granted(self, term: int, node: Any, voters: int) -> bool:
        """Count a yes for ``term``; True once it makes a majority of ``voters``."""
        if term != self.term or self.allowed:
            return False
        self.grants.add(node)
        if len(self.grants) > voters / 2:
            self.allowed = True
            self.elections += 1
            return True
        return False

    def heard_leader(self, now: float) -> None:
        self.leader_heard_at = now
        self.allowed = False          # a leader exists: no election won before it counts
        self.term = None


def may_grant(*, now: float, leader_heard_at: float | None, min_timeout_s: float,
              is_leader: bool, my_term: int, asked_term: int,
              my_last: tuple[int, int], their_last: tuple[int, int]) -> bool:
    """Would this node vote for the asker in ``asked_term``, as far as it can tell now?

    No while it leads or heard from a leader within the minimum election timeout (the leader
    is alive: an election would only disturb it); no for a term below its own; no when the
    asker's log, as (last term, last index), is behind its own (it would refuse the vote).
    """
    if is_leader:
        return False
    if leader_heard_at is not None and now - leader_heard_at < min_timeout_s:
        return False
    if asked_term < my_term:
        return False
    return their_last >= my_last
