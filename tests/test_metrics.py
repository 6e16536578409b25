"""Metrics: the seq-time record behind the lag in seconds (a fake clock), then a real
three-node cluster's /metrics: conventional names, the standard collectors, build info, disk
space, and a replica's lag in seconds growing while it is stopped and back to 0 after."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacluster.replication.positions import ReplicaPositions, SeqTimes
from hacluster.role import VERSION
from hacluster.testing.harness import Cluster, NodeProc, wait_for


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(resolution: float = 0.05, entries: int = 1000) -> tuple[SeqTimes, FakeClock]:
    clock = FakeClock()
    return SeqTimes(clock=clock, resolution=resolution, entries=entries), clock


def test_caught_up_is_zero_and_nothing_noted_is_unknown() -> None:
    times, clock = make()
    assert times.lag_s(10, 10) == 0.0 and times.lag_s(12, 10) == 0.0
    assert times.lag_s(5, 10) is None           # nothing noted: no figure, not a guess
    times.note(10)
    clock.now += 3
    assert times.lag_s(10, 10) == 0.0
    assert times.lag_s(9, 10) == pytest.approx(3.0)


def test_lag_is_the_age_of_the_first_seq_the_replica_lacks() -> None:
    times, clock = make()
    for seq in (10, 20, 30, 40):               # one write a second
        times.note(seq)
        clock.now += 1.0
    # now = 1004: seq 11..20 written at 1001, 21..30 at 1002, 31..40 at 1003.
    assert times.lag_s(10, 40) == pytest.approx(3.0)
    assert times.lag_s(15, 40) == pytest.approx(3.0)
    assert times.lag_s(20, 40) == pytest.approx(2.0)
    assert times.lag_s(39, 40) == pytest.approx(1.0)
    assert times.lag_s(40, 40) == 0.0


def test_an_idle_primary_does_not_make_an_old_applied_seq_look_late() -> None:
    """After ten idle minutes a replica missing only the newest write is 0.1 s behind, not
    ten minutes."""
    times, clock = make()
    times.note(100)
    clock.now += 600
    times.note(102)
    clock.now += 0.1
    assert times.lag_s(100, 102) == pytest.approx(0.1)
    assert times.lag_s(99, 102) == pytest.approx(600.1)


def test_notes_within_the_resolution_share_an_entry_and_stay_within_it() -> None:
    times, clock = make(resolution=0.05)
    for i in range(1, 1001):                   # 1000 writes in 0.1 s
        times.note(i)
        clock.now += 0.0001
    assert len(times._ring) <= 2
    late = times.lag_s(500, 1000)
    assert late is not None
    true_age = clock.now - (1000.0 + 500 * 0.0001)
    assert true_age - 0.05 <= late <= true_age + 1e-9   # low by at most the resolution


def test_the_record_is_bounded_and_then_reads_as_a_lower_bound() -> None:
    times, clock = make(resolution=0.01, entries=100)
    for i in range(1, 1001):
        times.note(i)
        clock.now += 0.01
    assert len(times._ring) == 100
    low = times.lag_s(1, 1000)                 # seq 2 was written 9.99 s ago
    assert low is not None and 0.9 < low < 9.99


def test_a_history_that_went_back_starts_over() -> None:
    times, clock = make()
    times.note(500)
    clock.now += 10
    times.note(100)                            # re-bootstrapped to a shorter history
    clock.now += 1
    assert times.lag_s(99, 100) == pytest.approx(1.0)
    assert times.lag_s(200, 500) is None       # the old entries are gone


def test_replica_positions_share_their_clock_with_the_record() -> None:
    clock = FakeClock()
    positions = ReplicaPositions(clock=clock)
    positions.written.note(7)
    clock.now += 2
    assert positions.written.lag_s(6, 7) == pytest.approx(2.0)


# -- a real cluster --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("metrics"), consensus=True,
                replication={"mode": "async"})
    c.start()
    c.wait_primary()
    yield c
    c.stop()


def scrape(node: NodeProc) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = node.get("/metrics").body.decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float | None:
    for found, v in samples.get(name, []):
        if all(found.get(k) == want for k, want in labels.items()):
            return v
    return None


def test_conventional_names_and_standard_collectors(cluster: Cluster) -> None:
    p = cluster.wait_primary()
    assert p.put("k", b"v").status == 200
    got = scrape(p)
    assert value(got, "hacluster_build_info", version=VERSION) == 1.0
    (labels, _), = got["hacluster_build_info"]
    assert labels["python"].count(".") == 2
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds", "python_info",
                 "python_gc_collections_total"):
        assert name in got, name
    free = value(got, "hacluster_disk_free_bytes")
    total = value(got, "hacluster_disk_total_bytes")
    assert free is not None and total is not None and 0 < free <= total
    assert value(got, "hacluster_disk_low") == 0.0
    assert "hacluster_http_request_duration_seconds_bucket" in got
    assert "hacluster_http_request_seconds_bucket" not in got
    assert "hacluster_raft_log_entries" in got and "hacluster_raft_commit_index" in got
    # The PUT waited for a group-commit round (storage.durability: fsync, the default).
    syncs = value(got, "hacluster_wal_syncs_total")
    writes = value(got, "hacluster_writes_total")
    assert syncs is not None and writes is not None and syncs >= 1, (syncs, writes)
    # Counters end in _total, and no name carries a unit the guide does not use.
    for name in got:
        assert not name.endswith(("_ms", "_milliseconds", "_mb", "_kb")), name


def test_lag_in_seconds_grows_while_a_replica_is_stopped(cluster: Cluster) -> None:
    p = cluster.wait_primary()
    stopped = next(n for n in cluster.nodes.values() if n is not p)
    assert p.put("before", b"v").status == 200
    cluster.wait_converged(nodes=[n for n in cluster.nodes.values() if n is not p])
    assert value(scrape(p), "hacluster_replication_lag_seconds", replica=stopped.name) == 0.0
    stopped.signal(signal.SIGSTOP)
    try:
        assert p.put("during", b"v").status == 200      # async: acknowledged alone
        wait_for(lambda: (value(scrape(p), "hacluster_replication_lag_seconds",
                                replica=stopped.name) or 0) >= 1.5, 20,
                 f"{stopped.name}'s lag in seconds to pass 1.5 s")
        got = scrape(p)
        assert (value(got, "hacluster_replication_lag_seqs", replica=stopped.name) or 0) > 0
        others = [n for n in cluster.nodes.values() if n not in (p, stopped)]
        for other in others:
            assert value(got, "hacluster_replication_lag_seconds", replica=other.name) == 0.0
    finally:
        stopped.signal(signal.SIGCONT)
    wait_for(lambda: value(scrape(p), "hacluster_replication_lag_seconds",
                           replica=stopped.name) == 0.0, 20,
             f"{stopped.name}'s lag in seconds back to 0")
    # The replica's own view, labelled with its own name; nothing about the others.

    def own_view() -> bool:
        own = scrape(stopped)
        return (value(own, "hacluster_replication_lag_seqs", replica=stopped.name) == 0.0
                and value(own, "hacluster_replication_lag_seconds", replica=stopped.name)
                == 0.0 and len(own["hacluster_replication_lag_seconds"]) == 1)

    wait_for(own_view, 20, f"{stopped.name}'s own view of its lag")
