"""Real processes on loopback: random workloads end with every replica identical to the primary.

One primary and two replicas from cluster.yaml-style configs; hypothesis draws workloads of
puts, deletes and range deletes over four column families, interleaved with memtable flushes
(WAL rollover) and compactions while the replicas stream. Each example is checked against a
model of what the data must be, and at the end the stopped DB directories are compared byte for
byte, sequence number included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacluster.key_seqs import SEQ_CF
from hacluster.testing.harness import CFS, Cluster, read_db

Model = dict[str, dict[bytes, bytes]]

keys = st.binary(min_size=1, max_size=3).map(lambda b: b"k" + b)
values = st.one_of(st.binary(max_size=64), st.binary(min_size=30_000, max_size=80_000))
cfs = st.sampled_from(CFS)
put = st.tuples(st.just("put"), cfs, keys, values)
delete = st.tuples(st.just("delete"), cfs, keys, st.just(b""))
delete_range = st.tuples(st.just("delete_range"), cfs, keys, keys).filter(lambda t: t[2] < t[3])
op = st.one_of(put, put, put, delete, delete_range)
step = st.one_of(st.lists(op, min_size=1, max_size=40), st.sampled_from(["flush", "compact"]))


def model_hash(model: Model) -> dict[str, dict[str, int]]:
    out = {}
    for cf in CFS:
        crc = 0
        for k, v in sorted(model[cf].items()):
            crc = crc32c.crc32c(struct.pack(">II", len(k), len(v)) + k + v, crc)
        out[cf] = {"keys": len(model[cf]), "crc32c": crc}
    return out


def apply_model(model: Model, ops: list[tuple[str, str, bytes, bytes]]) -> None:
    for kind, cf, key, value in ops:
        if kind == "put":
            model[cf][key] = value
        elif kind == "delete":
            model[cf].pop(key, None)
        else:
            for k in [k for k in model[cf] if key <= k < value]:
                del model[cf][k]


def to_request(ops: list[tuple[str, str, bytes, bytes]]) -> list[dict[str, Any]]:
    import base64
    out: list[dict[str, Any]] = []
    for kind, cf, key, value in ops:
        b64 = base64.b64encode
        if kind == "delete_range":
            out.append({"op": kind, "cf": cf, "start_b64": b64(key).decode(),
                        "end_b64": b64(value).decode()})
        elif kind == "delete":
            out.append({"op": kind, "cf": cf, "key_b64": b64(key).decode()})
        else:
            out.append({"op": kind, "cf": cf, "key_b64": b64(key).decode(),
                        "value_b64": b64(value).decode()})
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("convergence")
    c = Cluster(root, storage={"write_buffer_size_mb": 1})
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def model() -> Model:
    return {cf: {} for cf in CFS}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_random_workload_converges(cluster: Cluster, model: Model, steps: list[Any]) -> None:
    p = cluster.primary
    for s in steps:
        if s == "flush":
            assert p.post("/v1/admin/flush").status == 200
        elif s == "compact":
            assert p.post("/v1/admin/compact").status == 200
        else:
            p.batch(to_request(s))
            apply_model(model, s)
    primary_hash = cluster.wait_converged()     # every node's hash equal, SEQ_CF included
    # The model knows the user column families only; the store's own per-key seq records
    # (SEQ_CF) are compared across nodes by wait_converged.
    assert set(primary_hash["column_families"]) == {*CFS, SEQ_CF}
    assert {cf: primary_hash["column_families"][cf] for cf in CFS} == model_hash(model)


def test_stopped_databases_identical(cluster: Cluster, model: Model) -> None:
    """After the workload: stop all nodes and compare the DB dirs themselves, every CF and seq."""
    # Make sure the WAL rolled over at least once while replicas streamed.
    p = cluster.primary
    p.batch([{"op": "put", "key": "last", "value": "x"}])
    p.post("/v1/admin/flush")
    p.batch([{"op": "put", "key": "after-flush", "value": "y"}])
    apply_model(model, [("put", "default", b"last", b"x"), ("put", "default", b"after-flush",
                                                          b"y")])
    cluster.wait_converged()
    logs = sorted((p.data_dir / "db").glob("*.log")) + sorted(
        (p.data_dir / "db" / "archive").glob("*.log"))
    assert len(logs) >= 2, "the workload should have rolled the WAL"
    cluster.stop()
    seq, contents = read_db(cluster.primary.data_dir / "db")
    # the model has no SEQ_CF (the per-key seq records); replicas must match it too, below
    assert set(contents) == {*CFS, SEQ_CF}
    assert {cf: contents[cf] for cf in CFS} == model
    for node in cluster.replicas:
        r_seq, r_contents = read_db(node.data_dir / "db")
        assert r_seq == seq, f"{node.name} at seq {r_seq}, primary at {seq}"
        assert r_contents == contents, f"{node.name} content differs"
