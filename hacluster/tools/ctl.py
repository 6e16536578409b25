"""Operator commands against a running cluster: status, switchover, failover, pause, resume,
history, reinit, backup.

Owns what each command sends (through ``Client``), how long it waits for the cluster to show the
result, and what it prints: a table for people, ``--json`` for scripts. Exit codes: 0 done, 1 the
cluster refused or did not get there in time. It must never change the cluster except through
the nodes' HTTP API, and never report success before the cluster shows it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacluster.client.errors import HaclusterError, NoLeader, OutcomeUnknown, RequestFailed
from hacluster.config import ClusterConfig
from hacluster.tools import catchup
from hacluster.tools.progress import progress

if TYPE_CHECKING:
    from hacluster.client import Client
    from hacluster.replication.bootstrap import Bootstrapper

WAIT_S = 30.0
# How long a switchover whose answer was lost is given to show itself (one takes ~5 s at most).
HANDOVER_WAIT_S = 10.0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str("" if v is None else v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
           + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells]
    out.append(line)
    return "\n".join(out)


def wait(predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except HaclusterError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    return None


def _fail(message: str) -> int:
    print(f"hacluster: {message}", file=sys.stderr)
    return 1


def status(client: Client, cfg: ClusterConfig, as_json: bool) -> int:
    try:
        view = client.cluster()
    except HaclusterError as exc:
        return _fail(str(exc))
    if as_json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"Cluster: {cfg.name} (mode {view['mode']}, epoch {view['epoch']}"
          f"{', PAUSED' if view['paused'] else ''})")
    # A report older than the lease (and than two report intervals, so that a report on its
    # way is not taken for a dead member): the member may be gone although Raft has not yet
    # declared it stale (consensus.member_stale_s).
    stale_s = max(cfg.consensus.lease_s, 2 * cfg.consensus.report_interval_s)
    rows = [(m["name"], m["url"], m["role"] + (" (sync)" if m.get("sync") else ""),
             _state(m, stale_s), _epoch(m, view["epoch"]), m["applied_seq"], m["lag"],
             "" if m.get("report_age_s") is None else f"{m['report_age_s']:.1f} s ago",
             ",".join(m["tags"])) for m in view["members"]]
    print(table(["Member", "URL", "Role", "State", "Epoch", "Seq", "Lag", "Last seen", "Tags"],
                rows))
    if view["leader"] is None:
        print("No valid primary at the moment.")
    return 0


def _state(member: dict[str, Any], stale_s: float) -> str:
    age = member.get("report_age_s")
    if member["state"] == "running" and age is not None and age > stale_s:
        return "unreachable?"
    return str(member["state"])


def _epoch(member: dict[str, Any], cluster_epoch: int) -> str:
    """The member's own epoch when its report carries one, else the cluster's, labelled."""
    own = member.get("member_epoch")
    return str(own) if own is not None else f"{cluster_epoch} (cluster)"


def history(client: Client, as_json: bool) -> int:
    try:
        records = client.history()
    except HaclusterError as exc:
        return _fail(str(exc))
    if as_json:
        print(json.dumps(records, indent=2))
        return 0
    def when(r: dict[str, Any]) -> str:
        return (datetime.fromtimestamp(r["start_time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
                if r["start_time"] else "")

    # Dynamic configuration changes sit among the epochs, in time order (GET /history).
    rows = [(r["epoch"], r["primary"], r["first_seq"], when(r), r["reason"])
            if r.get("kind", "epoch") == "epoch" else
            (f"config v{r['version']}", "", "", when(r), ", ".join(
                f"{k}={'(file)' if v is None else v}" for k, v in r["changes"].items()))
            for r in records]
    print(table(["Epoch", "Primary", "First seq", "Started (UTC)", "Reason"], rows))
    return 0


def _leader_is(client: Client, name: str) -> bool:
    try:
        return bool(client.leader()["leader"] == name)
    except NoLeader:
        return False


def _handed_over(client: Client, before: str | None, to: str | None) -> str | None:
    """Who is primary now, if not ``before`` (and, with ``to``, only if it is ``to``)."""
    try:
        now = client.leader()["leader"]
    except HaclusterError:
        return None
    return now if now != before and (to is None or now == to) else None


def switchover(client: Client, to: str | None) -> int:
    try:
        before = client.leader()["leader"]
    except HaclusterError as exc:
        return _fail(f"switchover needs a healthy primary: {exc}")
    if to is not None and before == to:
        # Asked again after it happened (a retry whose first answer was lost, a re-run
        # playbook): the state asked for holds.
        print(f"{to} is already the primary: nothing to do")
        return 0
    try:
        result = client.admin("switchover", {"to": to} if to else {}, on_primary=True)
    except OutcomeUnknown as exc:
        # Sent, answer lost (the old primary steps down as it answers): not sent again — a
        # second switchover would move the primary once more. Who leads says what happened.
        print(f"the switchover's answer was lost ({exc}); waiting to see whether it happened")
        done = wait(lambda: _handed_over(client, before, to), HANDOVER_WAIT_S)
        if done is None:
            return _fail(f"switchover outcome unknown: {before} is still primary after "
                         f"{HANDOVER_WAIT_S} s; see `hacluster status` before asking again")
        result = {"switched_over_to": done}
    except HaclusterError as exc:
        # A refusal after the handover (a playbook's retry reaching the new primary): what
        # counts is who is primary.
        done = _handed_over(client, before, to)
        if done is None:
            why = "refused" if isinstance(exc, RequestFailed) else "needs a healthy primary"
            return _fail(f"switchover {why}: {exc}")
        result = {"switched_over_to": done}
    successor = result["switched_over_to"]
    print(f"{before} handed over to {successor}; waiting for it to accept writes")
    if not wait(lambda: _leader_is(client, successor)):
        return _fail(f"{successor} did not become primary within {WAIT_S} s")
    print(f"switchover done: {successor} is primary (epoch {client.leader()['epoch']})")
    return 0


def failover(client: Client, to: str, force: bool) -> int:
    try:
        result = client.admin("failover", {"to": to, "force": force})
    except RequestFailed as exc:
        return _fail(f"failover refused: {exc}")
    except OutcomeUnknown as exc:
        # Not sent again: a second forced failover is not the first one retried.
        print(f"the failover's answer was lost ({exc}); waiting to see whether {to} leads")
        result = {"after_epoch": "unknown"}
    except HaclusterError as exc:
        return _fail(str(exc))
    print(f"failover to {to} requested (after epoch {result['after_epoch']}"
          f"{', forced' if force else ''}); waiting for it to accept writes")
    if not wait(lambda: _leader_is(client, to)):
        return _fail(f"{to} did not become primary within {WAIT_S} s (see its /status "
                     "decision)")
    print(f"failover done: {to} is primary (epoch {client.leader()['epoch']})")
    return 0


def pause(client: Client, paused: bool) -> int:
    try:
        client.admin("pause" if paused else "resume", idempotent=True)
    except HaclusterError as exc:
        return _fail(str(exc))
    print("maintenance mode on: no automatic failover" if paused else
          "maintenance mode off: automatic failover resumes")
    return 0


def reinit(client: Client, cfg: ClusterConfig, name: str, wait_for_it: bool = True) -> int:
    """Ask ``name`` to rebuild itself from a checkpoint of the primary; unless told not to,
    follow it on its /status (download, then catch-up) until it has caught up."""
    url = cfg.node(name).api.url

    def node_status() -> dict[str, Any] | None:
        try:
            doc = json.loads(client.request(url, "GET", "/status").body)
        except (OSError, ValueError):     # restarting, or answering something else
            return None
        return doc if isinstance(doc, dict) else None

    before = catchup.previous_attempt(node_status())
    try:
        answer = client.request(url, "POST", "/v1/admin/reinit", b"{}")
    except OSError as exc:
        return _fail(f"{name} at {url} is not reachable: {exc}")
    if answer.status != 202:
        return _fail(f"reinit refused: {answer.body.decode(errors='replace')}")
    print(f"{name}: database removed; bootstrapping from {answer.json()['from']}", flush=True)
    if not wait_for_it:
        print(f"not waiting (--no-wait); follow it with `hacluster status` or {url}/status")
        return 0
    stuck = catchup.follow(name, node_status, before)
    if stuck is not None:
        return _fail(f"{stuck}; follow it with `hacluster status`")
    print(f"{name}: reinitialised and streaming")
    return 0


async def _fetch_with_progress(fetcher: Bootstrapper, desc: str) -> dict[str, Any]:
    """``fetcher.fetch()``, its bytes shown as they arrive (a bar on a terminal)."""
    task = asyncio.create_task(fetcher.fetch())
    report = fetcher.progress
    with progress(None, desc) as bar:
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            bar.set_total(report.bytes_total)
            bar.set(report.bytes_done)
    return task.result()


def backup(client: Client, cfg: ClusterConfig, dest: Path) -> int:
    """A checkpoint of the primary, copied and verified into ``dest`` (a RocksDB directory)."""
    from hacluster.replication import bootstrap
    from hacluster.store import Store

    if dest.exists():
        return _fail(f"{dest} exists; give a new directory")
    try:
        leader = client.leader()
    except NoLeader as exc:
        return _fail(f"a backup needs the primary: {exc}")
    staging = dest.parent / f".{dest.name}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    print(f"backup: checkpoint of {leader['leader']} (epoch {leader['epoch']}) into {dest}")
    fetcher = bootstrap.Bootstrapper(
        staging, leader["url"], {"Authorization": f"Bearer {client.token}"} if client.token
        else {}, "backup", cfg.replication.bootstrap_chunk_bytes,
        ssl=client.ssl if str(leader["url"]).startswith("https:") else None)
    try:
        manifest = asyncio.run(_fetch_with_progress(fetcher, "backup: checkpoint"))
    except (bootstrap.BootstrapError, OSError) as exc:
        return _fail(f"backup failed (the partial copy stays in {staging} and is resumed by "
                     f"the next run): {exc}")
    bootstrap.install(staging)
    # Verify: it opens, with every column family, at the checkpoint's sequence number.
    store = Store(staging / "db", cfg.column_families, cfg.storage)
    try:
        seq = store.latest_seq()
    finally:
        store.close()
        del store
        gc.collect()
    if seq != manifest["seq"]:
        return _fail(f"backup opened at seq {seq}, expected {manifest['seq']}; not kept")
    (staging / "db").rename(dest)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"backup done: {dest} at seq {seq} (epoch {manifest['epoch']}), "
          f"{manifest['total_bytes'] / 1e6:.1f} MB, {len(manifest['files'])} files")
    return 0


def member(client: Client, cfg: ClusterConfig, action: str, name: str,
           raft: str | None = None) -> int:
    """Add or remove a node in the Raft membership, asking the other nodes in turn."""
    if raft is None:
        address = cfg.node(name).raft
        if address is None:
            return _fail(f"{name} has no raft address in {cfg.source}")
        raft = str(address)
    body = json.dumps({"name": name, "raft": raft}).encode()
    method, path = (("POST", "/v1/admin/members") if action == "add" else
                    ("DELETE", f"/v1/admin/members/{name}"))
    errors = []
    for other in cfg.nodes:
        if other.name == name:
            continue
        try:
            answer = client.request(other.api.url, method, path, body,
                                    {"Content-Type": "application/json"}, timeout=30)
        except OSError as exc:
            errors.append(f"{other.name}: {exc}")
            continue
        if answer.status != 200:
            return _fail(f"member {action} refused by {other.name}: "
                         f"{answer.body.decode(errors='replace')}")
        doc = answer.json()
        print(f"{name} {'added to' if action == 'add' else 'removed from'} the Raft "
              f"membership; members now: {', '.join(doc['raft_members'])}")
        print(f"start {name} now (hacluster run --config ... --node {name})" if action == "add"
              else f"stop {name} and remove it from every node's config")
        return 0
    return _fail(f"no other node answered: {'; '.join(errors)}")
