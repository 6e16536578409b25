"""A resent Raft append-entries, trimmed to what the follower's log does not hold already.

Owns ``_trim_resend``: the same message without the entries the follower has (same index, same
term), so that pysyncobj cuts the log only at a real conflict (on a resend it cut and rewrote
entries the follower had acknowledged). It must never change what a message means (a message
it cannot prove safe to trim goes on as sent), and never write or sync the journal.
"""

from __future__ import annotations

from typing import Any

from hacluster.consensus.raft_journal_format import journal_sync_state


def _trim_resend(so: Any, message: dict[str, Any]) -> dict[str, Any]:
    """An append-entries message, without the part of it the follower's log already has.

    pysyncobj's follower cuts its log after prevLogIdx whenever its log goes further, then
    appends what the message carries: a leader that resends (its next index for us went back
    after a late answer) makes it drop and rewrite entries it had acknowledged, and a power
    loss in between loses them. Raft cuts only at a conflict. Same message, trimmed:

    * entries it has already (same index, same term) are dropped from the message, and
      prevLogIdx/prevLogTerm moved past them, so pysyncobj cuts at the first conflict only;
    * when it has every entry sent and its last entry is of the sender's term (by Raft's log
      matching, its whole log then matches the leader's), nothing is cut and the answer says so.

    Anything else (a conflict at the first entry, prevLogIdx not matching, a tail of older
    terms past what was sent, a stale term, chunked transmissions) goes to pysyncobj as sent.
    """
    if "prevLogIdx" not in message or "transmission" in message or \
            message.get("term", -1) < so._SyncObj__raftCurrentTerm:
        return message
    raft_log = so._SyncObj__raftLog
    if len(raft_log) == 0:
        return message
    first, last, last_term = raft_log[0][1], raft_log[-1][1], raft_log[-1][2]
    prev = message["prevLogIdx"]
    if not first <= prev < last or raft_log[prev - first][2] != message["prevLogTerm"]:
        return message
    entries = list(message.get("entries") or [])
    have = 0
    for entry in entries:
        if entry[1] > last or raft_log[entry[1] - first][2] != entry[2]:
            break
        have += 1
    if have < len(entries) and entries[have][1] <= last:        # a conflict at entries[have]
        if have == 0:
            return message
        kept = entries[have - 1]
        trimmed = dict(message, prevLogIdx=kept[1], prevLogTerm=kept[2], entries=entries[have:])
    elif have < len(entries):                                    # new entries past ours
        if entries[have][1] != last + 1:
            return message
        trimmed = dict(message, prevLogIdx=last, prevLogTerm=last_term, entries=entries[have:])
    elif last_term == message["term"]:                          # all of it is ours already
        trimmed = dict(message, prevLogIdx=last, prevLogTerm=last_term, entries=[])
    else:
        return message
    state = journal_sync_state(raft_log)
    if state is not None:
        state.resent_kept += have
    return trimmed
