"""Managed mode's service process: started, health-checked, stopped, killed and restarted for
real (no mocks), and the example service (examples/kvservice) that embeds RocksDB itself."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import psutil
import pytest
import rocksdict
from aiohttp import web

from hacluster.config import SECRET_ENVS, TOKEN_ENV
from hacluster.managed.policy import (
    ServiceError,
    ServiceSpec,
    backoff_s,
    child_env,
    reconcile,
    restart_decision,
)
from hacluster.managed.service import Service
from hacluster.managed.supervisor import Supervisor

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kvservice" / "service.py"
SLEEP = "import time; time.sleep(60)"
LOG = logging.getLogger("test.managed")


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def make_spec(**kw: object) -> ServiceSpec:
    base = ServiceSpec(primary_command=py(SLEEP), replica_command=py(SLEEP),
                       stop_signal=signal.SIGTERM, stop_timeout_s=10.0, start_timeout_s=20.0,
                       health_url=None, health_command=None, health_interval_s=0.05, env={},
                       cwd=None, max_restarts=3, restart_window_s=60.0, log_file=None)
    return replace(base, **kw)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(check: Callable[[], object], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Whatever a failing test left running is killed."""
    started: list[Service] = []
    yield started
    for svc in started:
        svc.kill_now("test teardown")


# -- the decisions ------------------------------------------------------------------------------

def test_restart_decision_gives_up_after_more_than_max_restarts_in_the_window() -> None:
    assert restart_decision([100.0], 100.0, 2, 60.0) == "restart"
    assert restart_decision([90.0, 100.0], 100.0, 2, 60.0) == "restart"
    assert restart_decision([80.0, 90.0, 100.0], 100.0, 2, 60.0) == "give_up"
    # Exits older than the window do not count.
    assert restart_decision([10.0, 20.0, 90.0, 100.0], 100.0, 2, 60.0) == "restart"
    assert restart_decision([100.0], 100.0, 0, 60.0) == "give_up"


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_two() -> None:
    assert [backoff_s(n) for n in range(7)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert backoff_s(1000) == 2.0


def test_reconcile() -> None:
    assert reconcile("primary", None, False) == "start"
    assert reconcile("primary", "primary", False) == "watch"
    assert reconcile("replica", "primary", False) == "stop"
    assert reconcile(None, "replica", False) == "stop"
    assert reconcile(None, None, False) == "idle"
    assert reconcile("primary", None, True) == "idle"
    assert reconcile("primary", "primary", True) == "stop"


def test_the_service_env_has_no_secrets_and_config_then_node_values_win() -> None:
    base = {name: "secret" for name in SECRET_ENVS} | {"PATH": "/bin", "A": "base"}
    env = child_env(base, {"A": "config", "B": "config"}, {"B": "node", "HACLUSTER_ROLE": "x"})
    assert env == {"PATH": "/bin", "A": "config", "B": "node", "HACLUSTER_ROLE": "x"}


# -- the process --------------------------------------------------------------------------------

async def test_a_service_starts_with_its_env_and_stops_on_sigterm(
        tmp_path: Path, services: list[Service], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    monkeypatch.setenv(TOKEN_ENV, "secret")
    out = tmp_path / "env.json"
    code = ("import json, os, sys, time\n"
            "print('to stdout', flush=True); print('to stderr', file=sys.stderr, flush=True)\n"
            f"open({str(out)!r} + '.tmp', 'w').write(json.dumps(dict(os.environ)))\n"
            f"os.rename({str(out)!r} + '.tmp', {str(out)!r})\n"
            "time.sleep(60)")
    spec = make_spec(primary_command=py(code), env={"FROM_CONFIG": "1"}, cwd=tmp_path,
                     log_file=tmp_path / "logs" / "service.log")
    svc = Service(spec, "n2", LOG)
    services.append(svc)
    assert await svc.stop("nothing runs") is None
    await svc.start("primary", {"HACLUSTER_ROLE": "primary", "HACLUSTER_EPOCH": "7"})
    assert svc.running and svc.role == "primary" and svc.pid is not None
    assert svc.started_at is not None
    assert f"n2: service started as primary: pid {svc.pid}, epoch 7" in caplog.text
    with pytest.raises(ServiceError):
        await svc.start("primary", {})
    await eventually(out.exists)
    env = json.loads(out.read_text())
    assert env["HACLUSTER_ROLE"] == "primary" and env["HACLUSTER_EPOCH"] == "7"
    assert env["FROM_CONFIG"] == "1" and TOKEN_ENV not in env
    pid = svc.pid
    assert await svc.stop("demoted") == -signal.SIGTERM
    assert not svc.running and svc.pid is None and svc.role is None
    assert gone(pid)
    assert svc.last_exit_requested and svc.exit_times == []
    assert "stopped by SIGTERM in" in caplog.text and "demoted" in caplog.text
    assert await svc.stop("again") == -signal.SIGTERM    # idempotent
    assert await svc.wait_exit() == -signal.SIGTERM
    text = (tmp_path / "logs" / "service.log").read_text()
    assert "to stdout" in text and "to stderr" in text


async def test_a_service_that_ignores_sigterm_is_killed_with_its_children(
        tmp_path: Path, services: list[Service], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    child_pid = tmp_path / "child.pid"
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"p = subprocess.Popen([sys.executable, '-c', {SLEEP!r}])\n"
            f"open({str(child_pid)!r} + '.tmp', 'w').write(str(p.pid))\n"
            f"os.rename({str(child_pid)!r} + '.tmp', {str(child_pid)!r})\n"
            "time.sleep(60)")
    svc = Service(make_spec(primary_command=py(code), stop_timeout_s=30.0), "n1", LOG)
    services.append(svc)
    await svc.start("primary", {})
    await eventually(child_pid.exists)
    grandchild = int(child_pid.read_text())
    began = time.monotonic()
    assert await svc.stop("demoted", timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - began < 10
    assert "killed after 0.500 s" in caplog.text
    await eventually(lambda: gone(grandchild), timeout=5)


async def test_kill_now_kills_at_once_from_another_thread(services: list[Service]) -> None:
    svc = Service(make_spec(), "n1", LOG)
    services.append(svc)
    svc.kill_now("nothing runs")            # never raises
    await svc.start("replica", {})
    pid = svc.pid
    assert pid is not None
    await asyncio.to_thread(svc.kill_now, "fenced")
    assert await asyncio.wait_for(svc.wait_exit(), 10) == -signal.SIGKILL
    assert svc.last_exit_requested and svc.exit_times == [] and not svc.running
    svc.kill_now("again")
    assert gone(pid)


async def test_kill_now_during_a_start_kills_what_it_starts(services: list[Service]) -> None:
    svc = Service(make_spec(), "n1", LOG)
    services.append(svc)
    starting = asyncio.ensure_future(svc.start("primary", {}))
    await asyncio.sleep(0)                  # in create_subprocess_exec: no pid known yet
    svc.kill_now("the lease ended")
    await starting
    assert await asyncio.wait_for(svc.wait_exit(), 10) == -signal.SIGKILL
    assert svc.last_exit_requested and not svc.running


async def test_an_exit_nobody_asked_for_is_unexpected(services: list[Service]) -> None:
    svc = Service(make_spec(primary_command=py("import sys; sys.exit(3)")), "n1", LOG)
    services.append(svc)
    await svc.start("primary", {})
    assert await asyncio.wait_for(svc.wait_exit(), 10) == 3
    assert not svc.last_exit_requested and len(svc.exit_times) == 1
    assert svc.last_exit_code == 3


async def test_no_replica_command_means_no_replica(services: list[Service]) -> None:
    svc = Service(make_spec(replica_command=None), "n1", LOG)
    with pytest.raises(ServiceError):
        await svc.start("replica", {})


# -- health -------------------------------------------------------------------------------------

async def test_health_by_url(tmp_path: Path, services: list[Service]) -> None:
    port = free_port()
    server = (sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1")
    good = Service(make_spec(primary_command=server, cwd=tmp_path,
                             health_url=f"http://127.0.0.1:{port}/"), "n1", LOG)
    services.append(good)
    assert not await good.healthy()
    await good.start("primary", {})
    assert await good.wait_healthy(20)
    # Served by the same server: 404 is not healthy.
    missing = Service(make_spec(primary_command=py(SLEEP),
                                health_url=f"http://127.0.0.1:{port}/missing"), "n1", LOG)
    services.append(missing)
    await missing.start("primary", {})
    assert not await missing.healthy()
    assert not await missing.wait_healthy(0.2)
    await missing.stop("test")
    await good.stop("test")
    assert not await good.healthy()
    # Nothing listens any more: not healthy either, and quickly.
    refused = Service(make_spec(health_url=f"http://127.0.0.1:{port}/"), "n1", LOG)
    services.append(refused)
    await refused.start("primary", {})
    assert not await refused.healthy()
    await refused.stop("test")


async def test_health_by_command_sees_the_service_env(services: list[Service]) -> None:
    check = py("import os, sys; sys.exit(os.environ['HACLUSTER_ROLE'] != 'primary')")
    svc = Service(make_spec(health_command=check), "n1", LOG)
    services.append(svc)
    await svc.start("primary", {"HACLUSTER_ROLE": "primary"})
    assert await svc.wait_healthy(20)
    await svc.stop("test")
    assert not await svc.healthy()
    await svc.start("replica", {"HACLUSTER_ROLE": "replica"})
    assert not await svc.wait_healthy(0.5)
    await svc.stop("test")
    # Neither a URL nor a command: running is healthy.
    plain = Service(make_spec(), "n1", LOG)
    services.append(plain)
    await plain.start("primary", {})
    assert await plain.healthy()
    await plain.stop("test")


# -- the supervisor -----------------------------------------------------------------------------

async def test_an_unexpected_exit_is_restarted(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # The first run exits 3, the next ones keep running.
    code = (f"import sys, time\nf = open({str(starts)!r}, 'a+'); f.seek(0); n = len(f.read())\n"
            "f.write('x'); f.close()\nsys.exit(3) if n == 0 else time.sleep(60)")
    sup = Supervisor(make_spec(primary_command=py(code)), "n1", log=LOG)
    try:
        await sup.want("primary", {"HACLUSTER_ROLE": "primary"})
        await eventually(lambda: sup.restarts == 1 and sup.status()["state"] == "running")
        status = sup.status()
        assert status["last_exit_code"] == 3 and status["role"] == "primary"
        assert status["pid"] == sup.pid and sup.running
        await eventually(lambda: starts.read_text() == "xx")
        assert await sup.stop("demoted") == -signal.SIGTERM
        await asyncio.sleep(0.3)
        assert not sup.running and sup.status()["state"] == "stopped"
        assert starts.read_text() == "xx"       # a stop asked for is not restarted
    finally:
        await sup.close()


async def test_a_crash_loop_gives_up_and_tells_the_node(tmp_path: Path) -> None:
    told: list[str] = []

    async def gave_up(reason: str) -> None:
        told.append(reason)

    spec = make_spec(primary_command=py("import sys; sys.exit(3)"), max_restarts=2,
                     restart_window_s=60.0)
    sup = Supervisor(spec, "n1", on_give_up=gave_up, log=LOG)
    try:
        await sup.want("primary", {})
        await eventually(lambda: told)
        status = sup.status()
        assert status["state"] == "given_up" and sup.given_up
        assert status["restarts"] == 2 and status["last_exit_code"] == 3
        assert "3 failures within 60 s" in told[0]
        # Wanting the same role again changes nothing; another role is tried.
        await sup.want("primary", {})
        await asyncio.sleep(0.3)
        assert not sup.running and len(told) == 1
        await sup.want("replica", {})
        assert sup.running and sup.role == "replica"
        await eventually(lambda: sup.status()["state"] == "running")
    finally:
        await sup.close()
    assert not sup.running


async def test_a_start_that_never_gets_healthy_is_a_failure() -> None:
    told: list[str] = []
    spec = make_spec(health_command=py("import sys; sys.exit(1)"), start_timeout_s=0.3,
                     max_restarts=1, stop_timeout_s=5.0)
    sup = Supervisor(spec, "n1", on_give_up=told.append, log=LOG)
    try:
        await sup.want("primary", {})
        await eventually(lambda: told)
        assert "not healthy within 0.3 s" in told[0]
        assert not sup.running and sup.status()["state"] == "given_up"
    finally:
        await sup.close()


async def test_role_changes_stop_and_fence(tmp_path: Path) -> None:
    told: list[str] = []
    sup = Supervisor(make_spec(), "n1", on_give_up=told.append, log=LOG)
    try:
        await sup.want("primary", {"HACLUSTER_ROLE": "primary"})
        first = sup.pid
        assert sup.running and sup.role == "primary" and first is not None
        await sup.want("replica", {"HACLUSTER_ROLE": "replica"})
        assert sup.running and sup.status()["role"] == "replica" and sup.pid != first
        assert gone(first)
        await sup.want(None)
        assert not sup.running
        await sup.want("primary", {})
        second = sup.pid
        assert second is not None
        sup.fence("the lease ended")
        await eventually(lambda: not sup.running)
        await asyncio.sleep(0.3)
        assert not sup.running and sup.status()["state"] == "stopped"
        assert sup.status()["last_exit_code"] == -signal.SIGKILL
        assert sup.restarts == 0 and told == []
    finally:
        await sup.close()


async def test_a_stop_during_the_start_is_no_failure() -> None:
    told: list[str] = []
    spec = make_spec(health_command=py("import sys; sys.exit(1)"), start_timeout_s=30.0,
                     max_restarts=0)
    sup = Supervisor(spec, "n1", on_give_up=told.append, log=LOG)
    try:
        await sup.want("primary", {})
        assert sup.running and sup.status()["state"] == "starting"
        began = time.monotonic()
        assert await sup.stop("demoted") == -signal.SIGTERM
        await asyncio.sleep(0.3)
        assert time.monotonic() - began < 10
        assert sup.status()["state"] == "stopped" and told == [] and not sup.running
    finally:
        await sup.close()


# -- the example service ------------------------------------------------------------------------

def kv_spec(port: int, cwd: Path) -> ServiceSpec:
    command = (sys.executable, str(EXAMPLE), "--port", str(port))
    return make_spec(primary_command=command, replica_command=command, cwd=cwd,
                     health_url=f"http://127.0.0.1:{port}/health", health_interval_s=0.1,
                     start_timeout_s=30.0)


def kv_env(role: str, db: Path, **extra: str) -> dict[str, str]:
    return {"HACLUSTER_ROLE": role, "HACLUSTER_DB_PATH": str(db), **extra}


async def test_the_example_as_primary_creates_the_db_and_closes_it_on_sigterm(
        tmp_path: Path, services: list[Service]) -> None:
    port, db = free_port(), tmp_path / "db"
    svc = Service(kv_spec(port, tmp_path), "n1", LOG)
    services.append(svc)
    await svc.start("primary", kv_env("primary", db))
    assert await svc.wait_healthy(30)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{url}/kv/a", data=b"one") as resp:
            assert resp.status == 200
            assert (await resp.json())["seq"] >= 1
        async with http.get(f"{url}/kv/a") as resp:
            assert resp.status == 200 and await resp.read() == b"one"
        async with http.get(f"{url}/kv/nope") as resp:
            assert resp.status == 404
        async with http.get(f"{url}/health") as resp:
            assert await resp.json() == {"role": "primary", "seq": 1}
    assert await svc.stop("test") == 0
    reopened = rocksdict.Rdict(str(db), rocksdict.Options(raw_mode=True))
    try:
        assert reopened[b"a"] == b"one"
    finally:
        reopened.close()


async def test_the_example_as_replica_reads_what_the_writer_wrote_and_refuses_writes(
        tmp_path: Path, services: list[Service]) -> None:
    port, db = free_port(), tmp_path / "db"
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    writer = rocksdict.Rdict(str(db), opts)
    try:
        writer[b"k1"] = b"v1"
        svc = Service(kv_spec(port, tmp_path), "n2", LOG)
        services.append(svc)
        await svc.start("replica", kv_env("replica", db))
        assert await svc.wait_healthy(30)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/kv/k1") as resp:
                assert resp.status == 200 and await resp.read() == b"v1"
            async with http.put(f"{url}/kv/k2", data=b"no") as resp:
                assert resp.status == 503
            writer[b"k2"] = b"v2"               # the secondary catches up before each read
            async with http.get(f"{url}/kv/k2") as resp:
                assert resp.status == 200 and await resp.read() == b"v2"
            async with http.get(f"{url}/health") as resp:
                assert await resp.json() == {"role": "replica", "seq": 2}
        assert await svc.stop("test") == 0
    finally:
        writer.close()


async def test_the_example_acknowledges_a_write_only_once_hacluster_holds_it(
        tmp_path: Path, services: list[Service]) -> None:
    # A stand-in for hacluster's GET /v1/wait: this tests the example, not hacluster.
    asked: list[tuple[str, str, str | None]] = []
    answer = {"status": 200}

    async def wait(request: web.Request) -> web.Response:
        asked.append((request.query["seq"], request.query["timeout_ms"],
                      request.headers.get("Authorization")))
        if answer["status"] == 200:
            return web.json_response({"seq": int(request.query["seq"]), "epoch": 4})
        return web.json_response({"error": "not yet"}, status=answer["status"])

    app = web.Application()
    app.router.add_get("/v1/wait", wait)
    runner = web.AppRunner(app)
    await runner.setup()
    api_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    try:
        port, db = free_port(), tmp_path / "db"
        svc = Service(kv_spec(port, tmp_path), "n1", LOG)
        services.append(svc)
        await svc.start("primary", kv_env(
            "primary", db, HACLUSTER_API_URL=f"http://127.0.0.1:{api_port}", KVSERVICE_WAIT="1",
            KVSERVICE_WAIT_TIMEOUT_MS="1500", KVSERVICE_TOKEN="tok"))
        assert await svc.wait_healthy(30)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{url}/kv/a", data=b"1") as resp:
                assert resp.status == 200
                assert await resp.json() == {"seq": 1, "epoch": 4}
            assert asked == [("1", "1500", "Bearer tok")]
            answer["status"] = 504
            async with http.put(f"{url}/kv/b", data=b"2") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["seq"] == 2 and body["outcome"] == "unknown"
                assert "504" in body["error"]
            async with http.get(f"{url}/kv/b") as resp:     # written here all the same
                assert await resp.read() == b"2"
        assert await svc.stop("test") == 0
    finally:
        await runner.cleanup()


def test_the_example_is_where_the_tests_look() -> None:
    assert EXAMPLE.is_file() and os.access(EXAMPLE, os.R_OK)
