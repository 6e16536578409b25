"""The replicated state machine's transitions: compare-and-set lock, bounded, deterministic."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.consensus.state import (
    MAX_HISTORY,
    MAX_MEMBERS,
    Acquire,
    ClusterState,
    Command,
    CommandError,
    Lock,
    Member,
    Release,
    Renew,
    Report,
    SetPaused,
    SetSyncSet,
    apply_command,
)


def acquire(candidate: str, epoch: int, renewals: int = 0, seq: int = 1,
            last_epoch: int | None = None) -> Acquire:
    # By default the candidate's data lies on the history: it followed the last epoch.
    return Acquire(candidate, epoch, renewals, seq, 1.0, "failover", 1_700_000_000.0,
                   epoch if last_epoch is None else last_epoch)


def run(*cmds: Command, state: ClusterState | None = None) -> tuple[ClusterState, list[bool]]:
    state = state or ClusterState()
    results = []
    for cmd in cmds:
        state, ok = apply_command(state, cmd)
        results.append(ok)
    return state, results


def test_acquire_is_compare_and_set_on_epoch_and_renewals() -> None:
    state, ok = run(acquire("n1", 0, seq=1), acquire("n2", 0), Renew("n1", 1),
                    acquire("n2", 1, renewals=0), acquire("n2", 1, renewals=1, seq=42))
    assert ok == [True, False, True, False, True]
    assert state.lock == Lock("n2", 2, 1.0, 0, False, None, 41)  # holder_seq: start_seq - 1
    assert [(r.epoch, r.primary, r.start_seq) for r in state.history] == [(1, "n1", 1),
                                                                          (2, "n2", 42)]


def test_a_renewal_the_candidate_did_not_see_defeats_its_acquire() -> None:
    # The candidate judged the lease expired at renewal 3; renewal 4 committed first.
    state, _ = run(acquire("n1", 0), Renew("n1", 1), Renew("n1", 1), Renew("n1", 1))
    state, ok = run(Renew("n1", 1), acquire("n2", 1, renewals=3), state=state)
    assert ok == [True, False]
    assert state.lock.holder == "n1"


def test_only_the_holder_of_the_current_epoch_renews_releases_or_sets_the_sync_set() -> None:
    state, ok = run(acquire("n1", 0), Renew("n2", 1), Renew("n1", 0),
                    SetSyncSet("n2", 1, frozenset({"n3"})),
                    SetSyncSet("n1", 1, frozenset({"n2"})), Release("n2", 1), Release("n1", 1),
                    Renew("n1", 1))
    assert ok == [True, False, False, False, True, False, True, False]
    assert state.lock.released and state.lock.holder == "n1"
    assert state.sync_set == frozenset()  # released: no one may rely on the old set


def test_a_new_epoch_starts_with_an_empty_sync_set() -> None:
    state, _ = run(acquire("n1", 0), SetSyncSet("n1", 1, frozenset({"n2"})), acquire("n2", 1))
    assert state.sync_set == frozenset()


def test_reports_upsert_members_and_count_reports() -> None:
    state, _ = run(Report("n2", "http://b", 5, "replica", True),
                   Report("n1", "http://a", 9, "primary", True, frozenset({"nofailover"})),
                   Report("n2", "http://b", 7, "replica", False))
    assert [(m.name, m.applied_seq, m.healthy, m.reports) for m in state.members] == [
        ("n1", 9, True, 1), ("n2", 7, False, 2)]
    assert state.member("n1").tags == frozenset({"nofailover"})  # type: ignore[union-attr]


def test_members_and_history_are_bounded() -> None:
    cmds: list[Command] = [Report(f"m{i}", "u", 0, "replica", True)
                           for i in range(MAX_MEMBERS + 5)]
    state, ok = run(*cmds)
    assert len(state.members) == MAX_MEMBERS and ok.count(False) == 5
    state, _ = run(*(acquire("n1", e) for e in range(MAX_HISTORY + 10)))
    assert len(state.history) == MAX_HISTORY and state.history[-1].epoch == MAX_HISTORY + 10


def test_pause_flag() -> None:
    state, _ = run(SetPaused(True))
    assert state.paused
    assert not run(SetPaused(False), state=state)[0].paused


@pytest.mark.parametrize("build", [
    lambda: Report("bad name", "u", 0, "replica", True),
    lambda: Report("n1", "u" * 300, 0, "replica", True),
    lambda: Report("n1", "u", 0, "boss", True),
    lambda: Report("n1", "u", 0, "replica", True, frozenset({"rm -rf"})),
    lambda: Acquire("n1", -1, 0, 1, 1.0, "failover", 0.0),
    lambda: Acquire("n1", 0, 0, 0, 1.0, "failover", 0.0),
    lambda: Acquire("n1", 0, 0, 1, 1.0, "coup", 0.0),
    lambda: SetSyncSet("n1", 1, frozenset({"../x"})),
])
def test_malformed_commands_never_reach_the_log(build: object) -> None:
    with pytest.raises(CommandError):
        build()  # type: ignore[operator]


commands = st.one_of(
    st.builds(acquire, st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 4),
              st.integers(0, 3)),
    st.builds(Renew, st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 4)),
    st.builds(Release, st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 4)),
    st.builds(SetPaused, st.booleans()),
)


@given(st.lists(commands, max_size=40))
def test_epochs_only_grow_and_replay_is_deterministic(cmds: list[Command]) -> None:
    state = ClusterState()
    epochs = [0]
    for cmd in cmds:
        state, _ = apply_command(state, cmd)
        epochs.append(state.lock.epoch)
    assert epochs == sorted(epochs)
    assert run(*cmds)[0] == state
    assert [r.epoch for r in state.history] == list(range(1, state.lock.epoch + 1))


def test_renewals_record_the_holders_position_as_a_floor() -> None:
    state, ok = run(acquire("n1", 0, seq=11), Renew("n1", 1, 50), Renew("n1", 1, 40),
                    Renew("n2", 1, 99))
    assert ok == [True, True, True, False]
    assert state.lock.holder_seq == 50   # never lowered, and only by the holder


def test_a_renewal_voids_a_forced_failover_request() -> None:
    from hacluster.consensus.state import SetFailover
    state, _ = apply_command(ClusterState(), Acquire("n1", 0, 0, 1, 1.0, "bootstrap", 0.0))
    state, ok = apply_command(state, SetFailover("n2", 1, True))
    assert ok and state.failover_request is not None
    state, ok = apply_command(state, Renew("n1", 1, 5))
    assert ok and state.failover is None


def test_a_dump_pickled_before_new_fields_loads_with_their_defaults() -> None:
    """An upgrade loads the Raft dump an older version wrote: its objects lack the fields
    added since (lineage epoch, acknowledged floor, peer clock), which take their defaults."""
    member = Member("n1", "http://n1", 5, "replica", True, frozenset(), 3)
    older_member = object.__new__(Member)
    older_member.__setstate__(member.__getstate__()[:7])          # type: ignore[attr-defined]
    assert older_member == member
    state = ClusterState(Lock("n1", 2), (member,))
    older_state = object.__new__(ClusterState)
    older_state.__setstate__(state.__getstate__()[:6])             # type: ignore[attr-defined]
    assert (older_state.acked_epoch, older_state.acked_seq) == (0, 0)
    assert pickle.loads(pickle.dumps(state)) == state


def test_an_old_journal_replays_as_it_was_applied() -> None:
    """An Acquire written before the lineage and floor checks carries no lineage: replaying
    it must give the epoch it gave then, or a restarted node would rebuild another history."""
    from hacluster.consensus.raft import decode_command
    old = [("acquire", "n1", 0, 0, 1, 1.0, "bootstrap", 0.0),
           ("renew", "n1", 1, 50),
           ("acquire", "n2", 1, 1, 51, 1.0, "failover", 0.0)]
    state = ClusterState()
    for raw in old:
        state, ok = apply_command(state, decode_command(raw))
        assert ok
    assert (state.lock.holder, state.lock.epoch) == ("n2", 2)
    # The same Acquire in today's format, with no lineage, is refused: its data is unknown.
    fresh = decode_command(("acquire", "n3", 2, 0, 60, 1.0, "failover", 0.0, 0, 0, False))
    assert apply_command(state, fresh) == (state, False)
