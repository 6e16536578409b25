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
and the hooks that ``raft_journal`` installs in pysyncobj's tick and message handling (the
only place beside it that touches pysyncobj's private state). Pre-vote only
decides when a node may *start* an election; the election itself (terms, votes, logs) is
pysyncobj's, unchanged, so Raft's safety does not depend on it. A leadership transfer
(``timeout_now``) skips it: the leader asked for the election.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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


# -- the hooks raft_journal installs in pysyncobj's tick and message handling -------------

def _pre_votes(so: Any) -> PreVote:
    state: PreVote = so._SyncObj__transport._hacluster_prevote
    return state


def pre_vote_tick(so: Any, syncobj: Any) -> None:
    """Before pysyncobj's tick: when the election timer has fired, ask first (push the timer
    back, so the tick does not elect); once a majority said yes, let this tick elect."""
    pv = _pre_votes(so)
    now = syncobj.monotonicTime()
    if not so._SyncObj__connectedToAnyone():
        pv.answered()                  # no one to ask: silence says nothing about versions
    if (so._SyncObj__raftState == syncobj._RAFT_STATE.LEADER or so._SyncObj__selfNode is None
            or so._SyncObj__transferInProgress            # the leader asked for this election
            or so._SyncObj__raftElectionDeadline >= now
            or not so._SyncObj__connectedToAnyone() or not so._SyncObj__otherNodes):
        return
    if pv.allowed:
        pv.allowed, pv.term = False, None              # the tick below starts the election
        return
    if pv.peers_silent(now, len(so._SyncObj__otherNodes) + 1):
        log.warning("Raft: connected peers answered no pre-vote for %.0f s (a build without "
                    "pre-vote?): starting an election without one", SILENT_PEERS_S)
        pv.answered()
        return
    so._SyncObj__raftElectionDeadline = now + so._SyncObj__generateRaftTimeout()
    term = so._SyncObj__raftCurrentTerm + 1
    pv.start(term, so._SyncObj__selfNode, now)
    ask = {"type": PRE_VOTE, "term": term, "last_log_index": so._SyncObj__getCurrentLogIndex(),
           "last_log_term": so._SyncObj__getCurrentLogTerm()}
    for node in list(so._SyncObj__otherNodes):
        so._SyncObj__transport.send(node, ask)


def pre_vote_message(so: Any, syncobj: Any, node: Any, message: dict[str, Any]) -> None:
    pv = _pre_votes(so)
    pv.spoke(node)
    if message.get("type") == PRE_VOTE:
        try:
            grant = may_grant(
                now=syncobj.monotonicTime(), leader_heard_at=pv.leader_heard_at,
                min_timeout_s=so.conf.raftMinTimeout,
                is_leader=so._SyncObj__raftState == syncobj._RAFT_STATE.LEADER,
                my_term=so._SyncObj__raftCurrentTerm, asked_term=int(message["term"]),
                my_last=(so._SyncObj__getCurrentLogTerm(), so._SyncObj__getCurrentLogIndex()),
                their_last=(int(message["last_log_term"]), int(message["last_log_index"])))
        except (KeyError, TypeError, ValueError):
            return
        so._SyncObj__transport.send(node, {"type": PRE_VOTE_RESPONSE, "term": message["term"],
                                           "granted": grant})
    else:
        if (message.get("granted") is True and isinstance(term := message.get("term"), int)
                and pv.granted(term, node, len(so._SyncObj__otherNodes) + 1)):
            so._SyncObj__raftElectionDeadline = 0      # the next tick elects


def heard_from(so: Any, syncobj: Any, node: Any, term: int) -> None:
    """An append-entries of ``term`` came from ``node``: a leader heard, or one to tell."""
    if term >= so._SyncObj__raftCurrentTerm:
        _pre_votes(so).heard_leader(syncobj.monotonicTime())
    else:
        _tell_lower_term_leader(so, syncobj, node)


def _tell_lower_term_leader(so: Any, syncobj: Any, node: Any) -> None:
    """A leader of a lower term than ours is sending: make it step down (raft_prevote).

    A vote request in our current term, to it alone: pysyncobj's leader adopts a higher term
    from a vote request and becomes a follower. Any vote it sends back is for a term in which
    this node is no candidate (its next election is in a higher term), so it counts nowhere.
    """
    if so._SyncObj__selfNode is None or not _pre_votes(so).notice_due(
            node, syncobj.monotonicTime(), so.conf.raftMinTimeout):
        return
    so._SyncObj__transport.send(node, {
        "type": "request_vote", "term": so._SyncObj__raftCurrentTerm,
        "last_log_index": so._SyncObj__getCurrentLogIndex(),
        "last_log_term": so._SyncObj__getCurrentLogTerm()})
