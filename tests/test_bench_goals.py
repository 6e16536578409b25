"""The benchmarks judge their own stated goals: bench/replication.py, bench/raft.py,
bench/clock_faults.py and bench/failover.py --managed name every missed goal (their runs exit 1
then). The runs themselves are too long or need root; bench/sim.py's and bench/chaos.py's are
in test_sim.py and test_chaos_bench.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench.api as bench_api
import bench.clock_faults as bench_clock
import bench.failover_managed as bench_failover_managed
import bench.raft as bench_raft
import bench.replication as bench_replication


def replication_result(**changes: Any) -> dict[str, Any]:
    static = {"mode": "async", "consensus": False, "apply_ratio": 0.99, "lag_p99_ms": 3.0,
              "errors": 0}
    return {"mode": "sync", "consensus": True, "quick": True, "apply_ratio": 0.99,
            "lag_p99_ms": 1.0, "wal_apply_ratio": 0.85, "bootstrap_ratio": 0.9, "errors": 0,
            "static_async": static, **changes}


def missed(goals: list[tuple[Any, ...]]) -> list[str]:
    return [g[0] for g in goals if not g[-1]]


def test_replication_goals_cover_both_clusters() -> None:
    assert missed(bench_replication.check_goals(replication_result())) == []
    bad = replication_result(lag_p99_ms=5.5, errors=3, bootstrap_ratio=0.18)
    bad["static_async"]["apply_ratio"] = 0.9
    assert missed(bench_replication.check_goals(bad)) == [
        "lag_p99_ms", "static_async.apply_ratio", "bootstrap_ratio", "errors"]


def raft_figures(**changes: Any) -> dict[str, Any]:
    return {"errors": 0, "commits_per_s_ratio": 0.95, "p50_ms_ratio": 1.05,
            "leader_appends_per_sync": 60.0, "follower_appends_per_sync": 60.0, **changes}


@pytest.mark.parametrize(("changes", "names"), [
    ({}, []),
    ({"errors": 1}, ["errors"]),
    ({"commits_per_s_ratio": 0.7, "p50_ms_ratio": 1.4}, ["commits_per_s_ratio",
                                                           "p50_ms_ratio"]),
    ({"commits_per_s_ratio": None, "p50_ms_ratio": None}, ["commits_per_s_ratio",
                                                             "p50_ms_ratio"]),
    ({"follower_appends_per_sync": 1.0}, ["follower_appends_per_sync"]),
])
def test_raft_goals(changes: dict[str, Any], names: list[str]) -> None:
    assert missed(bench_raft.goals(raft_figures(**changes))) == names


def test_clock_faults_judges_only_rates_inside_the_lease_arithmetic() -> None:
    # ((1 + d) L + m) / ((1 - d) L) with the defaults (docs/reliability.md: 1.19).
    assert round(bench_clock.safe_below(), 2) == 1.19


def managed_failover(**changes: Any) -> dict[str, Any]:
    return {"rounds": 3, "rto_p99_s": 3.4, "service_start_p50_s": 2.0,
            "rto_minus_service_start_p99_s": 0.8, "lost_acked": 0, "unverified_acked": 0,
            "mode": "sync", **changes}


@pytest.mark.parametrize(("changes", "words"), [
    ({}, []),
    # A slow service start is the service's: only what hacluster adds to it is judged.
    ({"rto_p99_s": 9.0, "service_start_p50_s": 7.5}, []),
    ({"rto_minus_service_start_p99_s": 2.3}, ["RTO minus the service's start p99 2.3 s"]),
    ({"lost_acked": 2}, ["2 acknowledged writes lost in sync mode"]),
    ({"lost_acked": 2, "mode": "async"}, []),
    ({"unverified_acked": 5}, ["5 acknowledged writes could not be read back"]),
    ({"rounds": 0}, ["no round measured a failover"]),
])
def test_managed_failover_goals(changes: dict[str, Any], words: list[str]) -> None:
    missed = bench_failover_managed.goals_missed(managed_failover(**changes))
    assert len(missed) == len(words)
    for sentence, start in zip(missed, words, strict=True):
        assert sentence.startswith(start), missed


def test_api_cpu_figures_split_a_put_and_compare_it_with_the_bare_handler() -> None:
    put = {"primary": 300.0, "replica n2": 100.0, "replica n3": 120.0, "load": 200.0}
    ceiling = [{"server": 80.0, "load": 120.0}, {"server": 100.0, "load": 140.0}]
    out = bench_api.cpu_figures(put, ceiling)
    assert out["cpu_us_per_put_sync"] == {"primary": 300.0, "replicas": 220.0, "load": 200.0}
    assert out["cpu_us_per_request_ceiling"] == {"server": 90.0, "load": 130.0}
    assert out["cpu_ceiling_ratio_sync"] == round(220 / 720, 3)
    assert out["primary_cpu_bare_ratio"] == 0.3
    # A process whose CPU could not be read leaves the figure out rather than guessing it.
    assert bench_api.cpu_figures({"load": 200.0}, ceiling) == {}
    assert "cpu_ceiling_ratio_sync" not in bench_api.cpu_figures(put, [{"load": 1.0}])


def test_api_durable_bare_handler_answers_once_each_body_is_in_its_synced_file(
        tmp_path: Path) -> None:
    """The durable ceiling's server: every answered PUT's body is in the file (appended before
    the sync its answer waited for), whatever number of PUTs shared a sync."""
    import http.client
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    from hacluster.testing.harness import free_ports, wait_for

    port = free_ports(1)[0]
    server = mp.get_context("spawn").Process(target=bench_api._bare_server,
                                             args=(port, str(tmp_path)), daemon=True)
    server.start()

    def put(body: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("PUT", "/v1/kv/k", body=body)
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        wait_for(lambda: put(b"first;") == 200, 20, "the durable bare server")
        bodies = [b"body-%02d;" % i for i in range(20)]
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(put, bodies)) == [200] * 20
        written = (tmp_path / "log").read_bytes().split(b";")
        assert sorted(written[:-1]) == sorted([b"first", *(b[:-1] for b in bodies)])
    finally:
        server.terminate()
        server.join(10)


def test_api_ratios_against_the_two_ceilings_and_without_fsync() -> None:
    """The durable ceiling against the ceiling, the sync PUT against each, and the os_buffer
    cluster against the ceiling; a figure whose input was not measured is left out."""
    figures = {"put_rate_sync": 3000.0, "http_ceiling_rate": 10000.0,
               "http_durable_ceiling_rate": 6000.0, "put_rate_sync_os_buffer": 4500.0}
    out = bench_api.ratios(figures)
    assert out["durable_ceiling_ratio"] == 0.6 and out["put_durable_ceiling_ratio_sync"] == 0.5
    assert out["put_ceiling_ratio_sync"] == 0.3
    assert out["put_ceiling_ratio_sync_os_buffer"] == 0.45
    # Without an os_buffer phase the figure is left out, not guessed.
    del figures["put_rate_sync_os_buffer"]
    assert "put_ceiling_ratio_sync_os_buffer" not in bench_api.ratios(figures)


@pytest.mark.parametrize(("saturated_ceiling", "expected"), [(9000.0, 0.45), (12000.0, 0.375)])
def test_api_saturation_ratio_is_taken_against_the_higher_ceiling(
        saturated_ceiling: float, expected: float) -> None:
    """With 128 clients the bare handler's own rate may fall below its rate with 32; the
    cluster at 128 clients is held to whichever ceiling is higher, and left out unless the
    sync PUT and both ceilings were measured."""
    figures = {"put_rate_sync": 3000.0, "http_ceiling_rate": 10000.0,
               "put_rate_sync_128_clients": 4500.0,
               "http_ceiling_rate_128_clients": saturated_ceiling}
    assert bench_api.ratios(figures)["put_ceiling_ratio_sync_128_clients"] == expected
    # The goal's own ratio stays the one at 32 clients.
    assert bench_api.ratios(figures)["put_ceiling_ratio_sync"] == 0.3
    for missing in ("http_ceiling_rate_128_clients", "put_rate_sync_128_clients"):
        partial = {k: v for k, v in figures.items() if k != missing}
        assert "put_ceiling_ratio_sync_128_clients" not in bench_api.ratios(partial)
