"""The health-check verdicts, from hand-made node views (no sockets: they are pure)."""

from __future__ import annotations

from dataclasses import replace

from hacluster.api import probes
from hacluster.api.probes import NodeView

PRIMARY = NodeView(name="n1", is_primary=True, writable=True, epoch=3, leader="n1",
                   leader_url="http://n1:1", stream_state=None, applied_seq=500,
                   primary_seq=None, last_frame_age_s=None, loop_age_s=0.05, lease_s=0.6,
                   stream_timeout_s=2.0, max_lag=100)
REPLICA = replace(PRIMARY, name="n2", is_primary=False, writable=False,
                  stream_state="streaming", applied_seq=450, primary_seq=500,
                  last_frame_age_s=0.1)


def test_primary_probe_answers_200_only_on_a_writable_primary() -> None:
    assert probes.primary(PRIMARY).status == 200
    lapsed = probes.primary(replace(PRIMARY, writable=False))
    assert (lapsed.status, lapsed.body["reason"]) == (503, "primary without a valid lease")
    assert probes.primary(REPLICA).status == 503
    assert probes.primary(REPLICA).body["leader"] == "n1"


def test_replica_probe_needs_a_live_stream_within_the_lag() -> None:
    ok = probes.replica(REPLICA)
    assert (ok.status, ok.body["lag"], ok.body["max_lag"]) == (200, 50, 100)
    cases = {
        "this node is the primary": PRIMARY,
        "not streaming (bootstrapping)": replace(REPLICA, stream_state="bootstrapping"),
        "not streaming (no primary to follow)": replace(REPLICA, stream_state=None),
        "the stream has been silent": replace(REPLICA, last_frame_age_s=2.5),
        "lag unknown": replace(REPLICA, primary_seq=None),
        "tagged noloadbalance": replace(REPLICA, tags=frozenset({"noloadbalance"})),
    }
    for reason, view in cases.items():
        got = probes.replica(view)
        assert (got.status, got.body["reason"]) == (503, reason), reason
    behind = probes.replica(REPLICA, max_lag=49)
    assert (behind.status, behind.body["reason"]) == (503, "50 behind, over the allowed 49")
    assert probes.replica(replace(REPLICA, max_lag=10)).status == 503
    assert probes.replica(replace(REPLICA, max_lag=10), max_lag=50).status == 200


def test_read_only_takes_the_primary_and_fresh_replicas() -> None:
    assert probes.read_only(PRIMARY).status == 200
    assert probes.read_only(REPLICA).status == 200
    assert probes.read_only(replace(REPLICA, applied_seq=1)).status == 503
    assert probes.read_only(replace(PRIMARY, writable=False)).status == 503


def test_leader_answer() -> None:
    got = probes.leader(REPLICA)
    assert (got.status, got.body["leader"], got.body["url"], got.body["epoch"]) == (
        200, "n1", "http://n1:1", 3)
    none = probes.leader(replace(REPLICA, leader=None, leader_url=None))
    assert (none.status, none.body["leader"]) == (503, None)


def test_liveness_fails_when_the_control_loop_stalls_past_a_lease() -> None:
    assert probes.liveness(PRIMARY).status == 200
    assert probes.liveness(replace(PRIMARY, loop_age_s=None)).status == 200   # static mode
    stalled = probes.liveness(replace(PRIMARY, loop_age_s=0.9))
    assert stalled.status == 503
    assert stalled.body["reason"] == "control loop stalled for 0.90 s (lease 0.6 s)"


def test_readiness_means_serving_the_role() -> None:
    assert probes.readiness(PRIMARY).status == 200
    assert probes.readiness(REPLICA).status == 200
    assert probes.readiness(replace(PRIMARY, writable=False)).status == 503
    catching_up = probes.readiness(replace(REPLICA, applied_seq=300))
    assert (catching_up.status, catching_up.body["reason"]) == (
        503, "200 behind, over the allowed 100")
