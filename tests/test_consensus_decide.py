"""The failover decision table: small factories build a snapshot, each test asserts the sentence.

Like Patroni's test_ha: every branch of ``decide`` is pinned by the exact sentence it returns,
with a fake monotonic clock. Plus properties: a node without quorum never promotes; at most one
node of a cluster decides to promote from the same snapshot.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.consensus.decide import (
    Action,
    Decision,
    Observation,
    Policy,
    decide,
    failover_refusal,
)
from hacluster.consensus.lease import (
    LeaseTiming,
    holder_lease_end,
    holder_may_write,
    observer_lease_end,
)
from hacluster.consensus.model import (
    CloseGate,
    Follow,
    ProposeAcquire,
    ProposeRelease,
    ProposeRenew,
)
from hacluster.consensus.state import (
    Acquire,
    ClusterState,
    EpochRecord,
    Lock,
    Member,
    Release,
    Renew,
    apply_command,
)

T = LeaseTiming(lease_s=1.0, renew_interval_s=0.25, drift=0.05, margin_s=0.05)
ASYNC = Policy(timing=T, sync_mode=False, maximum_lag_on_failover=1000, member_stale_s=3.0)
SYNC = replace(ASYNC, sync_mode=True)
NOW = 100.0


def member(name: str, seq: int, *, healthy: bool = True, tags: frozenset[str] = frozenset(),
           role: str = "replica") -> Member:
    return Member(name, f"http://{name}", seq, role, healthy, tags, 1)


def cluster(holder: str | None = "n1", *, epoch: int = 7, released: bool = False,
            seqs: dict[str, int] | None = None, sync: frozenset[str] = frozenset(),
            paused: bool = False, **member_kw: dict[str, object]) -> ClusterState:
    seqs = seqs if seqs is not None else {"n1": 81233, "n2": 81233, "n3": 81200}
    members = tuple(member(n, s, **member_kw.get(n, {})) for n, s in sorted(seqs.items()))  # type: ignore[arg-type]
    return ClusterState(Lock(holder, epoch, 1.0, 5, released), members, (), sync, paused)


def obs(me: str, *, quorum: bool = True, seen: float | None = NOW - 0.2,
        proposed: float | None = None, seq: int | None = None,
        member_seen: dict[str, float] | None = None, last_epoch: int = 0,
        acquired: int | None = 7) -> Observation:
    seen_map = member_seen if member_seen is not None else {
        n: NOW - 0.5 for n in ("n1", "n2", "n3")}
    return Observation(me, NOW, quorum, seen, proposed,
                       81233 if seq is None else seq, seen_map, last_epoch, acquired)


def expired_seen() -> float:
    """A lock_seen_at whose lease ran out 0.31 s before NOW in the observer's view."""
    return NOW - 0.31 - (observer_lease_end(0.0, T))


# -- lease arithmetic -------------------------------------------------------------------------

def test_holder_stops_before_any_observer_may_take_over() -> None:
    # Proposal precedes every observer's apply, and the holder shortens what others lengthen.
    for proposed in (0.0, 10.0, 1234.5):
        assert holder_lease_end(proposed, T) < observer_lease_end(proposed, T)
    assert holder_may_write(10.0, 10.94, T)
    assert not holder_may_write(10.0, 10.95, T)
    assert not holder_may_write(None, 10.0, T)


def test_timing_rejects_a_renewal_interval_longer_than_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_interval_s"):
        LeaseTiming(lease_s=1.0, renew_interval_s=0.96, drift=0.05)


# -- the holder -------------------------------------------------------------------------------

def test_primary_renews_while_its_lease_is_valid() -> None:
    d = decide(cluster(), obs("n1", proposed=NOW - 0.2), ASYNC)
    assert d == Decision(Action.RENEW, "n1: primary, epoch 7; lease valid for 0.75 s",
                         target="n1", epoch=7, effects=(ProposeRenew(7),))


def test_primary_with_lapsed_lease_renews_before_writing() -> None:
    d = decide(cluster(), obs("n1", proposed=NOW - 2.0), ASYNC)
    assert (d.action, d.sentence) == (
        Action.RENEW, "n1: primary, epoch 7; lease lapsed, renewing before accepting writes")


def test_restarted_primary_has_no_lease_until_it_renews() -> None:
    d = decide(cluster(), obs("n1", proposed=None), ASYNC)
    assert d.sentence == "n1: primary, epoch 7; lease lapsed, renewing before accepting writes"


def test_primary_without_quorum_keeps_only_its_lease() -> None:
    d = decide(cluster(), obs("n1", quorum=False, proposed=NOW - 0.5), ASYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "n1: primary without quorum, epoch 7; lease ends in 0.45 s unless renewed")


def test_primary_without_quorum_demotes_when_its_lease_ends() -> None:
    d = decide(cluster(), obs("n1", quorum=False, proposed=NOW - 1.26), ASYNC)
    assert (d.action, d.sentence) == (
        Action.DEMOTE, "n1: demoted, no quorum, lease expired 0.31 s ago")


def test_pause_prefixes_the_sentence_but_the_primary_still_renews() -> None:
    d = decide(cluster(paused=True), obs("n1", proposed=NOW - 0.2), ASYNC)
    assert d.sentence == "PAUSE: n1: primary, epoch 7; lease valid for 0.75 s"


# -- followers --------------------------------------------------------------------------------

def test_replica_follows_a_primary_whose_lease_runs() -> None:
    d = decide(cluster(), obs("n2"), ASYNC)
    assert d == Decision(Action.FOLLOW, "n2: following n1 (epoch 7)", target="n1", epoch=7,
                         effects=(Follow("n1", 7),))


def test_replica_that_never_saw_a_renewal_waits_for_one() -> None:
    d = decide(cluster(), obs("n2", seen=None), ASYNC)
    assert d.sentence == "n2: following n1 (epoch 7); waiting for its next renewal"


def test_minority_side_elects_no_one() -> None:
    d = decide(cluster(), obs("n2", quorum=False, seen=expired_seen()), ASYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "n2: no quorum, electing no one; last known primary n1 (epoch 7)")


# -- elections --------------------------------------------------------------------------------

def test_best_candidate_promotes_after_the_lease_expired() -> None:
    d = decide(cluster(), obs("n2", seen=expired_seen()), ASYNC)
    assert d == Decision(
        Action.PROMOTE, "n2: promoting, epoch 8 from seq 81234; n1's lease expired 0.31 s ago",
        target="n2", epoch=8, start_seq=81234,
        effects=(ProposeAcquire(8, "failover", False, 1000),))


def test_other_replica_defers_to_the_better_candidate() -> None:
    d = decide(cluster(), obs("n3", seen=expired_seen(), seq=81200), ASYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "n3: n1's lease expired 0.31 s ago; n2 is the better candidate "
                     "(seq 81233 vs 81200)")


def test_tie_goes_to_the_smallest_name() -> None:
    state = cluster(seqs={"n1": 10, "n2": 50, "n3": 50})
    assert decide(state, obs("n2", seen=expired_seen(), seq=50), ASYNC).action is Action.PROMOTE
    d = decide(state, obs("n3", seen=expired_seen(), seq=50), ASYNC)
    assert d.sentence.endswith("n2 is the better candidate (seq 50 vs 50)")


def test_nofailover_member_is_never_a_candidate() -> None:
    state = cluster(n2={"tags": frozenset({"nofailover"})})
    d = decide(state, obs("n2", seen=expired_seen()), ASYNC)
    assert d.sentence == ("n2: n1's lease expired 0.31 s ago; not a candidate "
                          "(tagged nofailover)")
    d = decide(state, obs("n3", seen=expired_seen(), seq=81200), ASYNC)
    assert d.action is Action.PROMOTE


def test_unhealthy_and_stale_members_are_skipped() -> None:
    state = cluster(n2={"healthy": False})
    assert decide(state, obs("n2", seen=expired_seen()), ASYNC).sentence.endswith(
        "not a candidate (unhealthy)")
    stale = obs("n3", seen=expired_seen(), seq=81200,
                member_seen={"n1": NOW - 0.5, "n2": NOW - 10, "n3": NOW})
    assert decide(cluster(), stale, ASYNC).action is Action.PROMOTE


def test_a_member_too_far_behind_may_not_promote() -> None:
    state = cluster(seqs={"n1": 90000, "n2": 81233, "n3": 81200})
    d = decide(state, obs("n2", seen=expired_seen()), ASYNC)
    assert d.sentence == ("n2: n1's lease expired 0.31 s ago; not a candidate "
                          "(8767 behind, over maximum_lag_on_failover)")


def test_sync_mode_promotes_only_a_synchronous_standby() -> None:
    state = cluster(sync=frozenset({"n3"}))
    d = decide(state, obs("n2", seen=expired_seen()), SYNC)
    assert d.sentence == ("n2: n1's lease expired 0.31 s ago; not a candidate "
                          "(not in the synchronous set)")
    d = decide(state, obs("n3", seen=expired_seen(), seq=81200), SYNC)
    assert d.sentence == ("n3: promoting, epoch 8 from seq 81201; n1's lease expired "
                          "0.31 s ago")


def test_sync_mode_without_a_recorded_standby_promotes_no_one() -> None:
    d = decide(cluster(), obs("n2", seen=expired_seen()), SYNC)
    assert d.sentence == ("n2: n1's lease expired 0.31 s ago; no synchronous standby was "
                          "recorded, so no one can be promoted without risking acknowledged "
                          "writes")


def test_pause_holds_back_failover() -> None:
    d = decide(cluster(paused=True), obs("n2", seen=expired_seen()), ASYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "PAUSE: n2: n1's lease expired 0.31 s ago; no automatic failover in "
                     "maintenance mode")


def test_released_lock_is_taken_at_once() -> None:
    d = decide(cluster(released=True), obs("n2"), ASYNC)
    assert d.sentence == "n2: promoting, epoch 8 from seq 81234; n1 released the lock (epoch 7)"


def test_first_primary_of_a_new_cluster() -> None:
    state = cluster(holder=None, epoch=0, seqs={"n1": 0, "n2": 0, "n3": 0})
    d = decide(state, obs("n1", seq=0), SYNC)
    assert d.sentence == "n1: promoting, epoch 1 from seq 1; no primary yet"
    assert decide(state, obs("n2", seq=0), SYNC).sentence == (
        "n2: no primary yet; n1 is the better candidate (seq 0 vs 0)")


def test_node_not_yet_reported_waits() -> None:
    state = cluster(seqs={"n1": 5, "n2": 5})
    d = decide(state, obs("n3", seen=expired_seen(), seq=5), ASYNC)
    assert d.sentence == ("n3: n1's lease expired 0.31 s ago; not a candidate until my report "
                          "is in the cluster state")


# -- properties -------------------------------------------------------------------------------

names = st.sampled_from(["n1", "n2", "n3", "n4", "n5"])


@given(seqs=st.dictionaries(names, st.integers(0, 2000), min_size=1),
       holder=st.one_of(st.none(), names), released=st.booleans(), paused=st.booleans(),
       sync=st.frozensets(names), sync_mode=st.booleans(),
       seen=st.one_of(st.none(), st.floats(0, NOW)), quorum=st.booleans())
def test_at_most_one_promoter_and_never_without_quorum(
        seqs: dict[str, int], holder: str | None, released: bool, paused: bool,
        sync: frozenset[str], sync_mode: bool, seen: float | None, quorum: bool) -> None:
    state = cluster(holder=holder, released=released, seqs=seqs, sync=sync, paused=paused)
    policy = replace(ASYNC, sync_mode=sync_mode)
    promoters = []
    for me in seqs:
        # Every process runs on (the holder acquired its epoch itself): see below for one
        # that restarted.
        o = Observation(me, NOW, quorum, seen, None, seqs[me], {n: NOW for n in seqs},
                        acquired_epoch=state.lock.epoch)
        d = decide(state, o, policy)
        if d.action is Action.PROMOTE:
            promoters.append(me)
            assert quorum, "a node without quorum must never promote"
            assert d.epoch == state.lock.epoch + 1
    assert len(promoters) <= 1, promoters
    # A restarted holder takes a new epoch while others may judge its lease expired and
    # elect too: they all propose the same compare-and-set (epoch + 1 over the same lock),
    # so at most one Acquire takes effect.
    if holder in seqs and not released:
        o = Observation(holder, NOW, quorum, seen, None, seqs[holder], {n: NOW for n in seqs})
        d = decide(state, o, policy)
        if d.action is Action.PROMOTE:
            assert quorum and d.epoch == state.lock.epoch + 1


def test_the_node_that_released_the_lock_does_not_take_it_back() -> None:
    d = decide(cluster(released=True), obs("n1"), ASYNC)
    assert d.sentence == ("n1: n1 released the lock (epoch 7); not a candidate "
                          "(I held the lock)")


def test_the_node_that_released_the_lock_takes_it_back_when_no_one_else_qualifies() -> None:
    # Found by the simulator: the holder gave the lock up (its watchdog would not arm) and
    # was the only healthy node holding every write; the others are unhealthy. Waiting for
    # them would leave the cluster without a primary for as long as they stay so.
    state = cluster(released=True, n2={"healthy": False}, n3={"healthy": False})
    d = decide(state, obs("n1", seen=None), ASYNC)
    assert (d.action, d.sentence) == (
        Action.PROMOTE, "n1: promoting, epoch 8 from seq 81234; n1 released the lock (epoch 7)")
    assert decide(state, obs("n2", seen=None), ASYNC).sentence == (
        "n2: n1 released the lock (epoch 7); not a candidate (unhealthy)")


def test_rule_2_the_newest_epoch_s_prefix_is_a_floor() -> None:
    # Found by the simulator (sync mode): n1 acknowledged seq 1 and lost power before a
    # renewal recorded it; n3, its synchronous standby, took over from seq 4 (epoch 4) and
    # later gave the lock up; n2, which missed seqs 1..3, must not be elected next.
    history = (EpochRecord(3, "n1", 1, "bootstrap", 0.0), EpochRecord(4, "n3", 4, "failover",
                                                                      0.0))
    members = (replace(member("n1", 3), healthy=False, last_epoch=3),
               replace(member("n2", 0), last_epoch=0),
               replace(member("n3", 3), healthy=False, last_epoch=3))
    state = ClusterState(Lock("n3", 4, 1.0, 5, True), members, history, frozenset(), False)
    d = decide(state, obs("n2", seen=None, seq=0, last_epoch=0, acquired=None), SYNC)
    assert d.sentence == ("n2: n3 released the lock (epoch 4); not a candidate (at seq 0, "
                          "below seq 3 that epoch 4 started after: it would lose an "
                          "acknowledged write)")
    # The state machine refuses the same Acquire, whoever proposes it; --force alone may.
    cmd = Acquire("n2", 4, 5, 1, 1.0, "failover", 0.0, 0)
    assert apply_command(state, cmd) == (state, False)
    assert apply_command(state, replace(cmd, force=True))[1]


def test_rule_2_a_restarted_holder_releases_with_all_it_holds_as_the_floor() -> None:
    # Found by the simulator (200 s, seed 11): the primary's synchronous standby confirmed two
    # writes, the primary crashed before a renewal recorded them, came back, and gave the lock
    # up (its disk filled) knowing nothing of what it had acknowledged; a node that lacked the
    # writes was then elected. A restarted holder cannot know what it acknowledged, but
    # acknowledged writes are durable before the answer: it records everything it holds.
    state = cluster(n2={"healthy": False}, n3={"healthy": False})
    o = replace(obs("n1", acquired=None, seq=81240), disk_full="disk full")
    d = decide(state, o, SYNC)
    assert d.action is Action.RELEASE
    assert d.effects == (CloseGate("disk full"), ProposeRelease(7, 81240))
    # The process that acquired the epoch knows exactly what it acknowledged.
    mine = replace(obs("n1", acquired=7, proposed=NOW - 0.2, seq=81240), disk_full="disk full",
                   acked_seq=81236)
    assert decide(state, mine, SYNC).effects[-1] == ProposeRelease(7, 81236)


def test_a_node_without_a_database_is_only_a_candidate_before_anything_was_written() -> None:
    state = cluster(seqs={"n1": 5, "n2": 0, "n3": 0}, n2={"role": "starting"},
                    n3={"role": "starting"})
    d = decide(state, obs("n2", seen=expired_seen(), seq=0), ASYNC)
    assert d.sentence == "n2: n1's lease expired 0.31 s ago; not a candidate (no database yet)"
    # The holder's renewals record its seq: that counts as written even if no report says so.
    floor = replace(state, lock=replace(state.lock, holder_seq=3),
                    members=tuple(replace(m, applied_seq=0) for m in state.members))
    assert decide(floor, obs("n2", seen=expired_seen(), seq=0), ASYNC).action is Action.WAIT
    # A first primary that gave the lock back before writing anything (say, its required
    # watchdog failed): an empty node loses nothing, and someone must take over.
    nothing = replace(cluster(seqs={"n1": 0, "n2": 0, "n3": 0}, n2={"role": "starting"},
                              n3={"role": "starting"}),
                      lock=Lock("n1", 1, 1.0, 0, True))
    d = decide(nothing, obs("n2", seq=0), ASYNC)
    assert d.sentence == "n2: promoting, epoch 2 from seq 1; n1 released the lock (epoch 1)"
    fresh = cluster(holder=None, epoch=0, seqs={"n1": 0, "n2": 0}, n1={"role": "starting"},
                    n2={"role": "starting"})
    assert decide(fresh, obs("n1", seq=0), ASYNC).action is Action.PROMOTE


def test_a_node_judges_its_own_database_by_what_it_has_now_not_by_its_last_report() -> None:
    # n2's last report says replica at 81233, the best position; since then it set its
    # database aside (a divergent tail, a reinit) and its seq is only that report's guess.
    state = cluster(seqs={"n1": 81233, "n2": 81233, "n3": 81200})
    gone = replace(obs("n2", seen=expired_seen(), seq=81233), my_has_database=False)
    d = decide(state, gone, ASYNC)
    assert d.sentence == "n2: n1's lease expired 0.31 s ago; not a candidate (no database yet)"
    by_report = replace(gone, my_has_database=None)     # an older loop: its report decides
    assert decide(state, by_report, ASYNC).action is Action.PROMOTE
    # The other way: bootstrapped since its last report ("starting"), it is a candidate now.
    starting = cluster(seqs={"n1": 81233, "n2": 81233, "n3": 81200}, n2={"role": "starting"})
    assert decide(starting, by_report, ASYNC).sentence.endswith("(no database yet)")
    bootstrapped = replace(by_report, my_has_database=True)
    assert decide(starting, bootstrapped, ASYNC).action is Action.PROMOTE


def test_observers_wait_out_the_holders_recorded_lease_when_it_is_longer() -> None:
    long_lease = replace(cluster(), lock=Lock("n1", 7, 3.0, 5, False))
    d = decide(long_lease, obs("n2", seen=expired_seen()), ASYNC)
    assert d.action is Action.FOLLOW  # by our 1.0 s lease it expired; by n1's 3.0 s it has not


def test_switchover_successor_alone_takes_over() -> None:
    handed = replace(cluster(), lock=Lock("n1", 7, 1.0, 5, True, "n3"))
    d = decide(handed, obs("n3", seq=81233), ASYNC)
    assert d.sentence == ("n3: promoting, epoch 8 from seq 81234; n1 handed over to n3 "
                          "(epoch 7)")
    d = decide(handed, obs("n2"), ASYNC)
    assert d.sentence == ("n2: n1 handed over to n3 (epoch 7); n3 is the better candidate "
                          "(seq 81200 vs 81233)")
    # A successor that no longer qualifies does not block the others.
    gone = replace(handed, members=tuple(m for m in handed.members if m.name != "n3"))
    assert decide(gone, obs("n2"), ASYNC).action is Action.PROMOTE


# -- manual failover --------------------------------------------------------------------------

def manual(state: ClusterState, candidate: str, force: bool = False) -> ClusterState:
    from hacluster.consensus.state import FailoverRequest
    return replace(state, failover=FailoverRequest(candidate, state.lock.epoch, force))


def test_manual_failover_names_the_only_successor_even_when_paused() -> None:
    state = manual(cluster(paused=True, seqs={"n1": 100, "n2": 100, "n3": 90}), "n3",
                   force=True)
    d = decide(state, obs("n3", seen=expired_seen(), seq=90), ASYNC)
    assert d.action is Action.PROMOTE
    assert d.sentence == ("n3: promoting, epoch 8 from seq 91; n1's lease expired 0.31 s ago; "
                          "manual failover (forced)")
    other = decide(state, obs("n2", seen=expired_seen(), seq=100), ASYNC)
    assert other.sentence == ("n2: n1's lease expired 0.31 s ago; manual failover to n3 "
                              "(forced) requested")
    assert other.action is Action.WAIT


def test_manual_failover_without_force_keeps_acknowledged_writes() -> None:
    behind = manual(cluster(seqs={"n1": 100, "n2": 100, "n3": 90}), "n3")
    d = decide(behind, obs("n3", seen=expired_seen(), seq=90), ASYNC)
    assert d.action is Action.WAIT
    assert d.sentence == ("n3: n1's lease expired 0.31 s ago; manual failover to me refused: "
                          "n3 is at seq 90, behind seq 100: writes acknowledged after it would "
                          "be lost")
    outside = manual(cluster(sync=frozenset({"n2"})), "n3")
    d = decide(outside, obs("n3", seen=expired_seen()), SYNC)
    assert d.sentence.endswith("manual failover to me refused: n3 is not in the synchronous "
                               "set ['n2']: it may lack acknowledged writes")
    inside = manual(cluster(sync=frozenset({"n3"})), "n3")
    assert decide(inside, obs("n3", seen=expired_seen()), SYNC).action is Action.PROMOTE


def test_manual_failover_is_void_after_the_epoch_moves_and_never_beats_a_valid_lease() -> None:
    from hacluster.consensus.state import FailoverRequest
    stale = replace(cluster(seqs={"n1": 100, "n2": 100, "n3": 100}),
                    failover=FailoverRequest("n3", 6, True))
    assert stale.failover_request is None
    d = decide(stale, obs("n3", seen=expired_seen(), seq=100), ASYNC)
    assert d.sentence.endswith("n2 is the better candidate (seq 100 vs 100)")
    live = manual(cluster(), "n3", force=True)
    assert decide(live, obs("n3"), ASYNC).action is Action.FOLLOW


def test_manual_failover_refuses_a_node_without_a_database_even_forced() -> None:
    from hacluster.consensus.decide import failover_refusal
    state = cluster(n3={"role": "starting"})
    assert failover_refusal(state, "n3", True, ASYNC, {}, NOW) == "n3 has no database yet"
    assert failover_refusal(state, "n4", True, ASYNC, {}, NOW) == "n4 has never reported"
    live = cluster()
    assert failover_refusal(live, "n1", True, ASYNC, {}, NOW) == "n1 holds the lock of epoch 7"


def test_a_switchover_completes_in_pause_mode_but_only_to_its_successor() -> None:
    handed = replace(cluster(paused=True), lock=Lock("n1", 7, 1.0, 5, True, "n3"))
    d = decide(handed, obs("n3", seq=81233), ASYNC)
    assert d.action is Action.PROMOTE and d.sentence.startswith("n3: promoting, epoch 8")
    gone = replace(handed, members=tuple(m for m in handed.members if m.name != "n3"))
    d = decide(gone, obs("n2"), ASYNC)
    assert d.action is Action.WAIT
    assert d.sentence == ("PAUSE: n2: n1 handed over to n3 (epoch 7); n3 does not qualify and "
                          "there is no automatic failover in maintenance mode")


# -- rule 1: elections compare (epoch of the last write, seq) and drop divergent tails ---------

def stale_tail_cluster(*, released: bool = True, acked: int = 0,
                       sync: frozenset[str] = frozenset()) -> ClusterState:
    """The review's case: A (n1) holds seqs 81..500 written in epoch 5 while cut off; B (n2)
    took over at 81 in epoch 6 and wrote to 90; C (n3) follows B to 90. B then gives up."""
    members = (replace(member("n1", 500), last_epoch=5),
               replace(member("n2", 90), last_epoch=6),
               replace(member("n3", 90), last_epoch=6))
    history = (EpochRecord(5, "n1", 1, "bootstrap", 0.0),
               EpochRecord(6, "n2", 81, "failover", 0.0))
    return ClusterState(Lock("n2", 6, 1.0, 5, released), members, history, sync, False,
                        acked_epoch=6 if acked else 0, acked_seq=acked)


def test_rule_1_a_stale_tail_never_wins_an_election() -> None:
    state = stale_tail_cluster()
    d = decide(state, obs("n1", seq=500, last_epoch=5, acquired=None), ASYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "n1: n2 released the lock (epoch 6); not a candidate (diverged: its seqs "
        "81..500 came from epoch 5, but epoch 6 took over at seq 81)")
    d = decide(state, obs("n3", seq=90, last_epoch=6, acquired=None), ASYNC)
    assert d == Decision(Action.PROMOTE, "n3: promoting, epoch 7 from seq 91; n2 released "
                         "the lock (epoch 6)", target="n3", epoch=7, start_seq=91,
                         effects=(ProposeAcquire(7, "failover", False, 1000),))


def test_rule_1_rank_is_epoch_of_the_last_write_then_seq() -> None:
    # n1 followed epoch 6 to 85 (behind n3 at 90, both on the history): seq decides. n2 has
    # epoch 5's 200 at a higher seq, but off the history: never ranked at all.
    members = (replace(member("n1", 85), last_epoch=6), replace(member("n2", 200), last_epoch=5),
               replace(member("n3", 90), last_epoch=6))
    history = (EpochRecord(5, "n2", 1, "bootstrap", 0.0),
               EpochRecord(6, "n4", 81, "failover", 0.0))
    state = ClusterState(Lock("n4", 6, 1.0, 5, True), members, history)
    d = decide(state, obs("n1", seq=85, last_epoch=6, acquired=None), ASYNC)
    assert d.sentence.endswith("n3 is the better candidate (seq 90 vs 85)")
    # A node that caught up from epoch 6's primary carries label 6 even for seqs epoch 5
    # wrote before 81: the epoch of the last write is what ranks, as in Raft.
    members = (replace(member("n1", 70), last_epoch=6), replace(member("n3", 75), last_epoch=5))
    state = ClusterState(Lock("n4", 6, 1.0, 5, True), members, history)
    d = decide(state, obs("n1", seq=70, last_epoch=6, acquired=None), ASYNC)
    assert d.sentence.endswith("n3 is the better candidate (seq 75 vs 70)")


def test_rule_1_state_machine_refuses_an_acquire_off_the_history() -> None:
    state = stale_tail_cluster()
    cmd = Acquire("n1", 6, 5, 501, 1.0, "failover", 0.0, last_epoch=5, force=True)
    assert apply_command(state, cmd) == (state, False)
    ok = Acquire("n3", 6, 5, 91, 1.0, "failover", 0.0, last_epoch=6)
    after, took = apply_command(state, ok)
    assert took and after.lock == Lock("n3", 7, 1.0, 0, False, None, 90)


# -- rule 2: the acknowledged floor survives a Release ----------------------------------------

def test_rule_2_release_keeps_the_floor_that_renewals_raised() -> None:
    state = ClusterState(Lock("n1", 7, 1.0, 5, False), (member("n1", 100), member("n2", 95)),
                         (EpochRecord(7, "n1", 1, "bootstrap", 0.0),), frozenset({"n2"}))
    state, ok = apply_command(state, Renew("n1", 7, 100, 96))
    assert ok and (state.acked_epoch, state.acked_seq) == (7, 96)
    state, ok = apply_command(state, Release("n1", 7, None, 99))
    assert ok and state.acked_seq == 99 and state.sync_set == frozenset()
    state, _ = apply_command(state, Renew("n1", 7, 100, 50))     # never lowered
    assert state.acked_seq == 99


def test_rule_2_after_a_release_no_candidate_below_the_floor_is_promoted() -> None:
    state = replace(cluster(released=True, seqs={"n1": 100, "n2": 98, "n3": 99}),
                    history=(EpochRecord(7, "n1", 1, "bootstrap", 0.0),),
                    acked_epoch=7, acked_seq=100)
    policy = replace(SYNC, maximum_lag_on_failover=10)
    for me, seq in (("n2", 98), ("n3", 99)):
        d = decide(state, obs(me, seq=seq, last_epoch=7, acquired=None), policy)
        assert d.action is Action.WAIT
        assert d.sentence.endswith(f"not a candidate (at seq {seq}, below seq 100 acknowledged "
                                   "in epoch 7: it would lose an acknowledged write)")
    # Async mode allows maximum_lag_on_failover below the floor (saved as divergent tails).
    d = decide(state, obs("n3", seq=99, last_epoch=7, acquired=None), policy.__class__(
        timing=T, sync_mode=False, maximum_lag_on_failover=10))
    assert d.action is Action.PROMOTE


def test_rule_2_forced_failover_alone_may_go_below_the_floor() -> None:
    state = replace(cluster(released=True, seqs={"n1": 100, "n2": 98, "n3": 99}),
                    history=(EpochRecord(7, "n1", 1, "bootstrap", 0.0),),
                    acked_epoch=7, acked_seq=100)
    assert failover_refusal(state, "n3", False, SYNC, {"n3": NOW}, NOW, 99, 7) == (
        "n3 is at seq 99, below seq 100 acknowledged in epoch 7: it would lose an "
        "acknowledged write")
    assert failover_refusal(state, "n3", True, SYNC, {"n3": NOW}, NOW, 99, 7) is None
    cmd = Acquire("n3", 7, 5, 100, 1.0, "manual failover", 0.0, last_epoch=7)
    assert apply_command(state, cmd) == (state, False)
    assert apply_command(state, replace(cmd, force=True))[1]


# -- rule 3: a restarted holder takes a new epoch ------------------------------------------------

def test_rule_3_restarted_holder_takes_a_new_epoch_from_what_it_holds() -> None:
    d = decide(cluster(), obs("n1", acquired=None), SYNC)
    assert d == Decision(
        Action.PROMOTE, "n1: promoting, epoch 8 from seq 81234; n1 holds the lock of epoch 7 "
        "from before a restart: a new epoch, never its old one", target="n1", epoch=8,
        start_seq=81234, effects=(ProposeAcquire(8, "restart", False, 0),))
    # The same process, after SIGSTOP and SIGCONT, still renews its own epoch.
    assert decide(cluster(), obs("n1", acquired=7, proposed=NOW - 0.2), SYNC).action is \
        Action.RENEW


def test_rule_3_restarted_holder_with_less_data_releases() -> None:
    d = decide(cluster(), obs("n1", seq=81000, acquired=None), SYNC)
    assert (d.action, d.sentence) == (
        Action.RELEASE, "n1: releasing the lock of epoch 7; n1 holds the lock of epoch 7 from "
        "before a restart and n2 holds more (seq 81233 of epoch 0 vs seq 81000)")
    floor = replace(cluster(), acked_epoch=7, acked_seq=81100)
    d = decide(floor, obs("n1", seq=81000, acquired=None,
                          member_seen={"n1": NOW}), SYNC)
    assert d.action is Action.RELEASE and "below seq 81100 acknowledged" in d.sentence
    assert decide(cluster(), obs("n1", acquired=None, quorum=False), SYNC).action is \
        Action.WAIT


def test_rule_3_restarted_holder_waits_for_fresh_reports_before_comparing() -> None:
    # Just restarted: n2 and n3's reports predate the restart (a power loss may have taken
    # their tails): wait for them to report again, at most member_stale_s.
    fresh = replace(obs("n1", acquired=None, member_seen={"n1": NOW}), uptime_s=1.0)
    d = decide(cluster(), fresh, SYNC)
    assert (d.action, d.sentence) == (
        Action.WAIT, "n1: n1 holds the lock of epoch 7 from before a restart; waiting for "
        "fresh reports from n2, n3")
    # Once they reported afresh, or once waiting longer could not help, it decides.
    assert decide(cluster(), replace(fresh, member_seen_at={"n1": NOW, "n2": NOW, "n3": NOW}),
                  SYNC).action is Action.PROMOTE
    assert decide(cluster(), replace(fresh, uptime_s=3.5), SYNC).action is Action.PROMOTE
    # Reports seen once since the restart (replayed from the log) are not fresh for this.
    replayed = replace(fresh, member_seen_at={"n1": NOW, "n2": NOW, "n3": NOW},
                       member_reported_at={"n1": NOW})
    assert decide(cluster(), replayed, SYNC).action is Action.WAIT
