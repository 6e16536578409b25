"""Replica positions on the primary, driven by a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacluster.replication.positions import ReplicaPosition, ReplicaPositions


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make() -> tuple[ReplicaPositions, FakeClock]:
    clock = FakeClock()
    return ReplicaPositions(clock=clock), clock


def row(positions: ReplicaPositions, name: str, primary_seq: int) -> dict[str, object]:
    (found,) = [r for r in positions.snapshot(primary_seq) if r["name"] == name]
    return found


def test_empty_snapshot() -> None:
    positions, _ = make()
    assert positions.snapshot(100) == []


def test_stream_opened_sets_position_and_link() -> None:
    positions, _ = make()
    positions.stream_opened("n2", since=40)
    assert positions.replicas["n2"] == ReplicaPosition(
        "n2", applied_seq=40, acked_at=1000.0, advanced_at=1000.0, connected=True, streams=1)
    assert positions.snapshot(100) == [{"name": "n2", "applied_seq": 40, "lag": 60,
                                        "connected": True, "last_ack_age": 0.0,
                                        "bootstraps": 0}]


def test_ack_moves_forward_and_lag_shrinks() -> None:
    positions, clock = make()
    positions.stream_opened("n2", since=0)
    clock.advance(0.5)
    positions.ack("n2", 70)
    assert row(positions, "n2", 100)["lag"] == 30
    positions.ack("n2", 100)
    assert row(positions, "n2", 100)["lag"] == 0
    assert row(positions, "n2", 100)["applied_seq"] == 100


def test_lag_never_negative() -> None:
    positions, _ = make()
    positions.stream_opened("n2", since=0)
    positions.ack("n2", 50)
    # the primary's seq may be read before the ack that reports beyond it
    assert row(positions, "n2", 40)["lag"] == 0


def test_stale_ack_does_not_move_position_back_but_counts_as_contact() -> None:
    positions, clock = make()
    positions.stream_opened("n2", since=10)
    positions.ack("n2", 90)
    clock.advance(3.0)
    positions.ack("n2", 50)  # reordered, older ack
    rep = positions.replicas["n2"]
    assert rep.applied_seq == 90
    assert rep.acked_at == 1003.0
    assert row(positions, "n2", 100)["lag"] == 10
    assert row(positions, "n2", 100)["last_ack_age"] == 0.0


def test_equal_ack_keeps_position() -> None:
    positions, _ = make()
    positions.stream_opened("n2", since=5)
    positions.ack("n2", 5)
    assert positions.replicas["n2"].applied_seq == 5


def test_new_stream_resets_position_even_lower() -> None:
    positions, _ = make()
    positions.stream_opened("n2", since=0)
    positions.ack("n2", 500)
    positions.stream_closed("n2")
    # the replica restarted from an older state (e.g. restored) and asks for seq 200
    positions.stream_opened("n2", since=200)
    assert positions.replicas["n2"].applied_seq == 200
    assert row(positions, "n2", 500)["lag"] == 300


def test_last_ack_age_follows_the_clock() -> None:
    positions, clock = make()
    positions.stream_opened("n2", since=1)
    clock.advance(2.25)
    assert row(positions, "n2", 1)["last_ack_age"] == 2.25
    positions.ack("n2", 2)
    clock.advance(0.0004)
    assert row(positions, "n2", 2)["last_ack_age"] == 0.0  # rounded to milliseconds
    clock.advance(1.2346)
    assert row(positions, "n2", 2)["last_ack_age"] == 1.235


def test_last_ack_age_is_none_before_any_contact() -> None:
    positions, _ = make()
    positions.bootstrap_started("n3")
    assert positions.snapshot(7) == [{"name": "n3", "applied_seq": 0, "lag": 7,
                                      "connected": False, "last_ack_age": None,
                                      "bootstraps": 1}]


def test_stream_closed_counts_streams() -> None:
    positions, _ = make()
    positions.stream_opened("n2", since=0)
    positions.stream_opened("n2", since=0)  # a reconnect before the old response ended
    positions.stream_closed("n2")
    assert positions.replicas["n2"].connected is True
    assert positions.replicas["n2"].streams == 1
    positions.stream_closed("n2")
    assert positions.replicas["n2"].connected is False
    assert positions.replicas["n2"].streams == 0
    positions.stream_closed("n2")  # never below zero
    assert positions.replicas["n2"].streams == 0
    assert positions.replicas["n2"].connected is False


def test_closing_keeps_position_and_ack_time() -> None:
    positions, clock = make()
    positions.stream_opened("n2", since=3)
    positions.ack("n2", 9)
    positions.stream_closed("n2")
    clock.advance(10)
    assert row(positions, "n2", 9) == {"name": "n2", "applied_seq": 9, "lag": 0,
                                       "connected": False, "last_ack_age": 10.0,
                                       "bootstraps": 0}


def test_bootstraps_counted_and_snapshot_sorted_by_name() -> None:
    positions, _ = make()
    for name in ("n3", "n1", "n2"):
        positions.stream_opened(name, since=0)
    positions.bootstrap_started("n2")
    positions.bootstrap_started("n2")
    snap = positions.snapshot(0)
    assert [r["name"] for r in snap] == ["n1", "n2", "n3"]
    assert [r["bootstraps"] for r in snap] == [0, 2, 0]


def test_replicas_are_independent() -> None:
    positions, _ = make()
    positions.stream_opened("a", since=1)
    positions.stream_opened("b", since=2)
    positions.ack("a", 50)
    positions.stream_closed("b")
    assert positions.replicas["a"].applied_seq == 50
    assert positions.replicas["b"].applied_seq == 2
    assert positions.replicas["a"].connected and not positions.replicas["b"].connected


@given(since=st.integers(0, 1000), acks=st.lists(st.integers(0, 2000), max_size=30),
       primary=st.integers(0, 3000))
def test_position_is_the_running_max_of_acks(since: int, acks: list[int], primary: int) -> None:
    positions, clock = make()
    positions.stream_opened("r", since)
    best = since
    for seq in acks:
        clock.advance(0.1)
        positions.ack("r", seq)
        best = max(best, seq)
        assert positions.replicas["r"].applied_seq == best
    assert row(positions, "r", primary)["lag"] == max(0, primary - best)


def test_a_replica_that_stops_moving_is_stalled_only_while_behind() -> None:
    positions, clock = make()
    positions.stream_opened("n2", since=10)
    positions.ack("n2", 20)
    assert not positions.stalled("n2", 20, 1.0)          # caught up: never stalled
    clock.advance(0.5)
    positions.ack("n2", 20)                               # an ack, but no progress
    assert not positions.stalled("n2", 30, 1.0)
    clock.advance(0.6)
    assert positions.stalled("n2", 30, 1.0)               # 1.1 s behind without moving
    positions.ack("n2", 25)
    assert not positions.stalled("n2", 30, 1.0)
    assert not positions.stalled("unknown", 30, 1.0)
