"""The client surface on a real three-node consensus cluster: leader query, health checks,
KV reads and writes with redirects, scans, cluster and history views, Prometheus metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import cbor2
import pytest

from hacluster.testing.harness import Cluster, NodeProc, request, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("surface"), consensus=True,
                limits={"max_key_bytes": 1024, "max_value_bytes": 65536,
                        "max_body_bytes": 262144, "max_batch_ops": 100})
    c.start()
    c.wait_primary()
    yield c
    c.stop()


def primary_and_replicas(cluster: Cluster) -> tuple[NodeProc, list[NodeProc]]:
    p = cluster.wait_primary()
    return p, [n for n in cluster.nodes.values() if n is not p]


def test_every_node_names_the_same_leader_without_a_token(cluster: Cluster) -> None:
    p, _ = primary_and_replicas(cluster)

    def agree() -> bool:
        answers = [n.get("/leader", token=None) for n in cluster.nodes.values()]
        return all(a.status == 200 and a.json()["leader"] == p.name for a in answers)

    wait_for(agree, 10, "every node to name the leader")
    body = cluster.nodes["n3"].get("/leader", token=None).json()
    assert body["url"] == f"http://127.0.0.1:{p.port}" and body["epoch"] >= 1


def test_health_checks_tell_the_primary_from_the_replicas(cluster: Cluster) -> None:
    p, replicas = primary_and_replicas(cluster)
    assert p.put("hc", b"v").status == 200
    cluster.wait_converged()
    assert p.get("/primary", token=None).status == 200
    assert p.get("/replica", token=None).status == 503
    for r in replicas:
        assert r.get("/primary", token=None).status == 503
        wait_for(lambda r=r: r.get("/replica", token=None).status == 200, 10, "a fresh replica")
        body = r.get("/replica?lag=0", token=None).json()
        assert body["lag"] == 0 and body["max_lag"] == 0
        assert r.get("/replica?lag=x", token=None).status == 400
    for n in cluster.nodes.values():
        for path in ("/read-only", "/liveness", "/readiness", "/health"):
            got = n.get(path, token=None)
            assert got.status == 200, (n.name, path, got.body)


def test_reads_and_writes_redirect_to_the_primary_unless_stale(cluster: Cluster) -> None:
    p, replicas = primary_and_replicas(cluster)
    r = replicas[0]
    resp = p.put("greeting", b"hello", cf="users")
    assert resp.status == 200
    body = resp.json()
    assert body["node"] == p.name and body["epoch"] >= 1 and body["seq"] >= 1
    got = p.get("/v1/kv/greeting?cf=users")
    assert (got.status, got.body, got.headers["x-hacluster-lag"]) == (200, b"hello", "0")
    moved = r.get("/v1/kv/greeting?cf=users")
    assert moved.status == 307
    assert moved.headers["location"] == f"http://127.0.0.1:{p.port}/v1/kv/greeting?cf=users"
    assert r.put("greeting", b"x", cf="users").status == 307
    wait_for(lambda: r.get("/v1/kv/greeting?cf=users&stale=1").status == 200, 10,
             "the replica to have the key")
    stale = r.get("/v1/kv/greeting?cf=users&stale=1")
    assert stale.body == b"hello" and stale.headers["x-hacluster-lag"].isdigit()
    assert request(p.port, "DELETE", "/v1/kv/greeting?cf=users").status == 200
    assert p.get("/v1/kv/greeting?cf=users").status == 404
    assert p.get("/v1/kv/greeting?cf=nope").status == 400
    assert p.get("/v1/kv/greeting", token=None).status == 401
    assert p.get("/v1/kv/greeting", token="wrong-token-0123456789").status == 403
    assert p.put("k" * 1025, b"v").status == 400


def test_a_scan_is_bounded_and_pages(cluster: Cluster) -> None:
    p, _ = primary_and_replicas(cluster)
    ops = [{"op": "put", "cf": "events", "key": f"scan/{i:03d}", "value": f"v{i}"}
           for i in range(25)]
    ops.append({"op": "put", "cf": "events", "key_b64": base64.b64encode(b"scan/\xff").decode(),
                "value": "binary"})
    p.batch(ops)
    first = p.get("/v1/kv?cf=events&prefix=scan/&limit=10").json()
    assert [i["key"] for i in first["items"]] == [f"scan/{i:03d}" for i in range(10)]
    assert first["more"] is True and first["items"][0]["value"] == "v0"
    rest = p.get("/v1/kv?cf=events&prefix=scan/&limit=100&start_after=scan/009").json()
    assert len(rest["items"]) == 16 and rest["more"] is False
    assert rest["items"][-1] == {"key_b64": base64.b64encode(b"scan/\xff").decode(),
                                 "value": "binary"}
    as_cbor = p.get("/v1/kv?cf=events&prefix=scan/&limit=100",
                    headers={"Accept": "application/cbor"})
    doc = cbor2.loads(as_cbor.body)
    assert doc["items"][-1] == [b"scan/\xff", b"binary"]
    assert p.get("/v1/kv?limit=0").status == 400
    assert p.get("/v1/kv?limit=10001").status == 400


def test_cluster_history_and_metrics(cluster: Cluster) -> None:
    p, replicas = primary_and_replicas(cluster)
    assert p.put("m", b"v").status == 200
    cluster.wait_converged()
    view = replicas[0].get("/cluster").json()
    assert view["leader"] == p.name and view["paused"] is False and view["mode"] == "sync"
    members = {m["name"]: m for m in view["members"]}
    assert set(members) == set(cluster.nodes)
    assert members[p.name]["role"] == "primary"
    assert all(m["state"] == "running" and m["url"].startswith("http://") for m in
               members.values())
    assert replicas[0].get("/cluster", token=None).status == 401
    history = p.get("/history").json()
    assert history[0]["epoch"] == 1 and history[0]["reason"] == "bootstrap"
    assert {"epoch", "primary", "first_seq", "start_time", "reason"} <= set(history[-1])
    text = p.get("/metrics").body.decode()
    from prometheus_client.parser import text_string_to_metric_families
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("hacluster_role", "hacluster_epoch", "hacluster_applied_seq",
                 "hacluster_replication_lag_seqs", "hacluster_replication_lag_seconds",
                 "hacluster_writes", "hacluster_failovers",
                 "hacluster_fencing_events", "hacluster_divergent_ops",
                 "hacluster_bootstrap_bytes", "hacluster_http_request_duration_seconds"):
        assert name in families, name
    for family in ("hacluster_replication_lag_seqs", "hacluster_replication_lag_seconds"):
        lags = {s.labels["replica"]: s.value for s in families[family].samples}
        assert set(lags) == {r.name for r in replicas}, family
    assert 'hacluster_role{role="primary"} 1.0' in text
    assert "hacluster_writable 1.0" in text
    assert 'hacluster_http_request_duration_seconds_count{method="PUT",route="/v1/kv/{key}"' in text
    replica_text = replicas[0].get("/metrics").body.decode()
    assert 'hacluster_role{role="replica"} 1.0' in replica_text
    assert f'hacluster_replication_lag_seqs{{replica="{replicas[0].name}"}}' in replica_text
    status = json.loads(p.get("/status").body)
    assert status["consensus"]["raft"]["log_len"] >= 1


def test_bad_input_gets_a_clear_4xx_and_nothing_is_applied(cluster: Cluster) -> None:
    p, _ = primary_and_replicas(cluster)
    assert p.put("before", b"v").status == 200
    seq = p.status()["applied_seq"]
    good = {"op": "put", "key": "never", "value": "x"}
    cases = [
        ("PUT", "/v1/kv/" + "k" * 1025, b"v", {}, 400, "max_key_bytes"),
        ("PUT", "/v1/kv/big", b"v" * 65537, {}, 400, "max_value_bytes"),
        ("PUT", "/v1/kv/k?cf=nope", b"v", {}, 400, "unknown column family"),
        ("POST", "/v1/batch", b"{not json", {}, 400, "JSON"),
        ("POST", "/v1/batch", b"\xff\xff", {"Content-Type": "application/cbor"}, 400,
         "CBOR"),
        ("POST", "/v1/batch", json.dumps({"ops": [good, {"op": "put", "cf": "nope",
                                                         "key": "a", "value": "b"}]}).encode(),
         {}, 400, "unknown column family"),
        ("POST", "/v1/batch", json.dumps({"ops": [good] * 101}).encode(), {}, 400,
         "max_batch_ops"),
        ("POST", "/v1/batch", json.dumps({"ops": [good, {"op": "launch", "key": "a"}]}).encode(),
         {}, 400, "launch"),
        ("POST", "/v1/batch", b"x" * 300_000, {}, 413, ""),
    ]
    for method, path, body, headers, status, words in cases:
        got = request(p.port, method, path, body=body, headers=headers)
        assert got.status == status, (path, got.status, got.body[:200])
        if status == 400:
            assert words in got.json()["error"], (path, got.json())
    assert p.status()["applied_seq"] == seq            # nothing was applied, not even partly
    assert p.get("/v1/kv/never").status == 404
