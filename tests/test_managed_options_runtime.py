"""The service's RocksDB options checked while it runs as primary, not only at hacluster's start.

A fresh service creates its database on its first start, and a service may open it again with
other options; RocksDB writes a new ``OPTIONS-NNNNNN`` file each time. Checked here: the pure
decisions (which file to check, when to list the directory), ``OptionsWatch`` over real
OPTIONS files, the database given back to hacluster after a refusal (``repair``),
``Supervisor.give_up``, and a real three-node cluster whose example service
creates its database with WAL recycling on: each node that becomes primary refuses within
seconds, names the option and the file in its log and ``/status``, acknowledges nothing, and
gives the primary role up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import hacluster.managed.options_watch as options_watch
import hacluster.managed.repair as repair
from hacluster.lineage.labels import Lineage
from hacluster.managed.options import ManagedDbError, check_service_options
from hacluster.managed.options_watch import SETTLE_NS, OptionsWatch, must_list, options_to_check
from hacluster.managed.supervisor import Supervisor
from hacluster.testing.harness import NodeProc, wait_for
from hacluster.testing.history import check_all
from tests.test_managed import Writer, good_db, managed_cluster
from tests.test_managed_service import LOG, SLEEP, eventually, make_spec, py

# -- the decisions ----------------------------------------------------------------------------


def test_the_newest_options_file_is_checked_once() -> None:
    assert options_to_check(None, []) is None                           # no database yet
    assert options_to_check(None, ["CURRENT", "000004.log"]) is None
    names = ["OPTIONS-000007", "OPTIONS-000012", "OPTIONS-9", "CURRENT", "LOCK"]
    assert options_to_check(None, names) == "OPTIONS-000012"            # by number
    assert options_to_check("OPTIONS-000012", names) is None            # checked already
    assert options_to_check("OPTIONS-000007", names) == "OPTIONS-000012"
    # RocksDB writes it as .dbtmp and renames it: a half-written file is never picked.
    assert options_to_check("OPTIONS-000012", [*names, "OPTIONS-000013.dbtmp"]) is None
    assert options_to_check(None, ["OPTIONS-000013.dbtmp", "OPTIONS"]) is None


def test_the_directory_is_listed_again_only_when_it_may_have_changed() -> None:
    t = 1_700_000_000 * 10**9
    assert must_list(None, t)                                 # never listed
    assert must_list((t, t + 5 * SETTLE_NS), t + 1)           # the mtime moved
    assert not must_list((t, t + SETTLE_NS), t)               # listed well after: trusted
    # Listed in the same clock tick as the mtime it saw: a change right after that listing
    # may have left the mtime as it was.
    assert must_list((t, t + SETTLE_NS - 1), t)
    assert must_list((t, t - 10**9), t)                       # the wall clock was set back


def write_options(newest: Path, number: int, line: str) -> Path:
    """A newer OPTIONS file with ``line`` (``key=value``) instead of the key's line."""
    key = line.split("=")[0]
    text = "\n".join(line if f.strip().startswith(key + "=") else f
                     for f in newest.read_text().splitlines())
    assert line in text
    target = newest.with_name(f"OPTIONS-{number:06d}")
    tmp = target.with_name(target.name + ".dbtmp")
    tmp.write_text(text)
    tmp.rename(target)          # as RocksDB does
    return target


def test_a_new_options_file_is_checked_and_a_refusal_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "db"
    watch = OptionsWatch(db)
    assert watch.look() is None and watch.checked is None     # not created yet
    newest = good_db(db)
    assert watch.look() is None and watch.checked == newest.name
    bad = write_options(newest, 99, "recycle_log_file_num=4")
    # The directory changed: found without being asked to list.
    refusal = watch.look()
    assert refusal is not None and "recycle_log_file_num=4" in refusal and bad.name in refusal
    assert watch.error == refusal
    bad.unlink()
    assert watch.look(list_anyway=True) == refusal            # kept: the spell is over


def test_an_unchanged_directory_is_not_listed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    newest = good_db(db)
    old = time.time() - 10
    os.utime(db, (old, old))
    listings: list[Path] = []
    real = os.listdir

    def counted(path: Any) -> list[str]:
        listings.append(Path(path))
        return real(path)

    monkeypatch.setattr(options_watch.os, "listdir", counted)
    watch = OptionsWatch(db)
    assert watch.look() is None and len(listings) == 1
    assert watch.look() is None and len(listings) == 1        # one stat, no listing
    assert watch.look(list_anyway=True) is None and len(listings) == 2
    write_options(newest, 50, "wal_compression=kZSTD")
    refusal = watch.look()
    assert len(listings) == 3 and refusal is not None and "wal_compression" in refusal


def test_a_file_deleted_while_it_is_read_is_no_refusal(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    newest = good_db(db)

    def deleted_meanwhile(db_path: Path, options_file: Path | None = None) -> None:
        assert options_file is not None
        options_file.unlink()       # RocksDB keeps only the newest two
        raise ManagedDbError(f"{options_file}: cannot read the OPTIONS file: gone")

    monkeypatch.setattr(options_watch, "check_service_options", deleted_meanwhile)
    watch = OptionsWatch(db)
    assert watch.look() is None and watch.error is None and watch.checked is None
    assert not newest.exists()


def test_a_refused_database_is_reopened_with_hacluster_s_options(tmp_path: Path) -> None:
    """What a service with WAL recycling leaves behind (RocksDB keeps recycling on only without
    WAL retention) is opened once with hacluster's options: the newest OPTIONS file passes the
    check, and the data is still there."""
    db = tmp_path / "db"
    good_db(db, recycle=4, key=b"k")
    with pytest.raises(ManagedDbError, match="recycle_log_file_num=4"):
        check_service_options(db)
    (tmp_path / "data").mkdir()
    lineage = Lineage(tmp_path / "data")
    lineage.record(3, 1)
    repair.give_db_back("n1", db, lineage, 3600, 1024)
    check_service_options(db)
    assert lineage.transitions == [(3, 1)]                    # kept: the data is the same
    rdb = rocksdict.Rdict(str(db), rocksdict.Options(raw_mode=True))
    try:
        assert rdb[b"k"] == b"v"
    finally:
        rdb.close()


def test_a_database_rocksdb_cannot_reopen_is_set_aside_and_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "svc" / "db"
    good_db(db)

    def cannot(db_dir: Path, ttl: int, size: int) -> None:
        raise Exception("Invalid argument: leveldb.BytewiseComparator does not match "
                        "existing comparator rev")

    monkeypatch.setattr(repair, "reopen_with_own_options", cannot)
    (tmp_path / "data").mkdir()
    lineage = Lineage(tmp_path / "data")
    lineage.record(3, 1)
    repair.give_db_back("n1", db, lineage, 3600, 1024)
    assert not db.exists()
    (aside,) = db.parent.glob("db.diverged-*")
    assert (aside / "CURRENT").is_file()
    assert lineage.transitions == [(0, 1)]                    # bootstraps from scratch
    repair.give_db_back("n1", db, lineage, 3600, 1024)        # no database: nothing to do


async def test_give_up_stops_a_running_service_and_tells_the_node() -> None:
    told: list[str] = []
    sup = Supervisor(make_spec(primary_command=py(SLEEP), restart_window_s=60.0), "n1",
                     on_give_up=told.append, log=LOG)
    try:
        await sup.want("primary", {})
        await eventually(lambda: sup.status()["state"] == "running")
        pid = sup.pid
        sup.options_error = "OPTIONS-000009: recycle_log_file_num=4"
        sup.give_up("its options are refused")
        await eventually(lambda: told and not sup.running)
        assert told == ["its options are refused"]
        status = sup.status()
        assert status["state"] == "given_up" and status["reason"] == "its options are refused"
        assert status["options_error"] == "OPTIONS-000009: recycle_log_file_num=4"
        assert sup.given_up and sup.primary_given_up and status["last_exit_code"] is not None
        # Not started as primary again within the window; once is enough.
        sup.give_up("again")
        await sup.want("primary", {})
        await asyncio.sleep(0.3)
        assert not sup.running and sup.pid != pid and told == ["its options are refused"]
    finally:
        await sup.close()


# -- real processes ---------------------------------------------------------------------------

def refused(node: NodeProc) -> str | None:
    try:
        service = node.status().get("service") or {}
    except OSError:
        return None
    error: str | None = service.get("options_error")
    return error


def test_a_fresh_database_with_wal_recycling_is_refused_on_the_primary(tmp_path: Path) -> None:
    """Every node's service creates its database with WAL recycling (no OPTIONS file exists
    when hacluster starts, so the start-up check cannot see it). The node that becomes primary
    refuses within seconds of its service's start: one ERROR line and ``/status`` name the
    option and the file; its service is stopped; it acknowledges nothing (the writers wait on
    ``/v1/wait``); it releases the lock, and the next primary refuses in turn."""
    cluster, ports = managed_cluster(tmp_path, env={"KVSERVICE_RECYCLE_LOG_FILE_NUM": "4"})
    writers = [Writer(ports[n.name], n, f"{n.name}-") for n in cluster.nodes.values()]
    cluster.start()
    try:
        for w in writers:
            w.start()
        first: list[NodeProc] = []
        primary_since = 0.0

        def a_primary_runs_its_service() -> bool:
            nonlocal primary_since
            for node in cluster.nodes.values():
                try:
                    status = node.status()
                except OSError:
                    continue
                if status["role"] == "primary" and (status.get("service") or {}).get("pid"):
                    first[:] = [node]
                    primary_since = time.monotonic()
                    return True
            return False

        wait_for(a_primary_runs_its_service, 60, "a primary that started its service")
        node = first[0]
        error = wait_for(lambda: refused(node), 15, f"{node.name} to refuse the options")
        took = time.monotonic() - primary_since
        assert took < 10, took
        m = re.search(r"(OPTIONS-\d+): \[DBOptions\] recycle_log_file_num=4", error)
        assert m, error
        options_file = m.group(1)
        assert (tmp_path / "svc" / node.name / "db" / options_file).exists()
        # One ERROR line of the node's own says it all (a replica's stream ends with the
        # reason too, logged by its follower).
        def refusal_lines() -> list[str]:
            return [line for line in node.log().splitlines()
                    if " ERROR " in line and "recycle_log_file_num=4" in line
                    and "hacluster.replication" not in line]

        wait_for(refusal_lines, 10, "the refusal's log line")   # /status may say it first
        lines = refusal_lines()
        assert len(lines) == 1, lines
        assert options_file in lines[0] and "giving up the primary role" in lines[0], lines
        # Not a writable primary any more, its service stopped, the lock released.
        wait_for(lambda: not node.status()["writable"], 5, f"{node.name} to close its gate")
        wait_for(lambda: node.status()["service"]["pid"] is None, 15,
                 f"{node.name} to stop its service")
        wait_for(lambda: node.status()["role"] != "primary", 15,
                 f"{node.name} to give the primary role up")
        # /status keeps saying why after the demotion (the service is simply stopped now).
        status = node.status()
        assert options_file in status["service"]["options_error"], status["service"]
        assert status["service"]["state"] != "running", status["service"]
        assert node.get("/v1/wait?seq=1&timeout_ms=100").status == 503
        # The next primary's service creates its database the same way: refused too.
        others = [n for n in cluster.nodes.values() if n is not node]
        wait_for(lambda: any(refused(n) for n in others), 60, "the next primary to refuse")
    finally:
        for w in writers:
            w.stop()
        cluster.stop()
    # Nothing was acknowledged from a database whose options were refused.
    for w in writers:
        verdict = check_all(w.history.ops())
        assert verdict.ok, verdict
        assert verdict.acked == 0, verdict
    logging.getLogger("test").info("refused after %.2f s", took)
