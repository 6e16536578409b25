"""Replica positions are kept for cluster members only, and the map of them is bounded.

A real primary process answers 403 to the stream and ack endpoints for names that are not
members, and its /status never lists them; the bound of the map itself is checked on
``ReplicaPositions`` with a fake clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.replication.positions import PositionsFull, ReplicaPositions
from hacluster.testing.harness import Cluster


def test_the_primary_refuses_stream_and_ack_from_non_members(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.primary.start()
        n1 = cluster.primary
        for i in range(20):
            stream = n1.get(f"/v1/replication/stream?node=intruder-{i}&since=0")
            assert stream.status == 403, stream.body
            body = stream.json()
            assert body["error"] == "not a member"
            assert f"'intruder-{i}' is not a member of this cluster" in body["reason"]
            ack = n1.post("/v1/replication/ack", {"node": f"intruder-{i}", "seq": 1})
            assert ack.status == 403, ack.body
            assert ack.json()["error"] == "not a member"
        long_name = n1.post("/v1/replication/ack", {"node": "x" * 10_000, "seq": 1})
        assert long_name.status == 403 and len(long_name.body) < 500
        assert n1.post("/v1/replication/ack", {"node": "n2", "seq": 0}).status == 200
        assert [r["name"] for r in n1.status()["replicas"]] == ["n2"]
        # Bad input is still a 400, before any name check.
        assert n1.get("/v1/replication/stream?node=intruder&since=x").status == 400
        assert "not a cluster member" in n1.log()
        # The members themselves still replicate.
        for node in cluster.replicas:
            node.start()
        n1.put("k", b"v")
        cluster.wait_converged()
        assert sorted(r["name"] for r in n1.status()["replicas"]) == ["n2", "n3"]
    finally:
        cluster.stop()


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_map_is_capped_by_dropping_the_longest_silent_replica_without_a_stream() -> None:
    clock = Clock()
    positions = ReplicaPositions(clock=clock, max_replicas=3)
    positions.stream_opened("a", 0)
    clock.now += 1
    positions.ack("b", 5)              # no stream: may give way
    clock.now += 1
    positions.ack("c", 7)
    clock.now += 1
    positions.ack("d", 9)              # full: b, silent longest without a stream, goes
    assert sorted(positions.replicas) == ["a", "c", "d"]
    positions.stream_opened("c", 7)
    positions.stream_opened("d", 9)
    with pytest.raises(PositionsFull):
        positions.ack("e", 1)          # every record has a stream open: none is dropped
    assert sorted(positions.replicas) == ["a", "c", "d"]
    positions.bootstrap_started("e")   # only a counter: never raises
    positions.stream_closed("e")       # unknown: nothing to close, nothing created
    assert sorted(positions.replicas) == ["a", "c", "d"]
    positions.stream_closed("a")
    positions.ack("e", 1)
    assert sorted(positions.replicas) == ["c", "d", "e"]
