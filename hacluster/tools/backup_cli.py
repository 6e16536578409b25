"""The continuous-backup commands: ``backup now``, ``backup list``, ``restore`` and
``bootstrap-from``.

Owns their arguments, what each prints (tables for people, ``--json`` for scripts) and exit
codes (0 done, 1 failed, 2 bad usage). ``backup now`` asks the primary over HTTP (the archiver
does the work); ``backup list`` and ``restore`` read the archive directly with the config's
``backup`` section (no cluster needed: a restore after a region loss has none);
``bootstrap-from`` seeds a node's empty data directory from a restored database with no
lineage, so that the new cluster's first epoch owns it and nothing mistakes it for a member of
the old cluster's history. It must never overwrite an existing directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hacluster.backup import BackupError
from hacluster.config import ClusterConfig, ConfigError

ACTIONS = ("now", "list")
COMMANDS = frozenset({"restore", "bootstrap-from"})


def _fail(message: str, code: int = 1) -> int:
    print(f"hacluster: {message}", file=sys.stderr)
    return code


def add_backup_options(bk: argparse.ArgumentParser) -> None:
    bk.add_argument("--json", action="store_true", help="backup now / list: print JSON")
    bk.add_argument("--no-wait", action="store_true",
                    help="backup now: return once the primary has started it")


def add_parsers(sub: Any, config_help: str) -> None:
    rs = sub.add_parser(
        "restore", help="rebuild a database from the archive at a seq, a time or the latest",
        description="Download the newest base backup at or before the target from backup.url, "
                    "verify every checksum, replay the archived WAL up to the target checking "
                    "sequence continuity, and move the result to --target (a RocksDB "
                    "directory; nothing is left there if anything fails).")
    rs.add_argument("--config", help=config_help + ": its backup section")
    target = rs.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-seq", type=int, metavar="N", help="restore through seq N")
    target.add_argument("--to-time", metavar="T",
                        help="restore what was archived by T (ISO 8601, e.g. "
                             "2026-12-04T10:30:00Z, or unix seconds)")
    target.add_argument("--latest", action="store_true", help="restore all that is archived")
    rs.add_argument("--target", type=Path, required=True, help="a new directory")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    bf = sub.add_parser(
        "bootstrap-from", help="seed a new cluster's first node from a restored database",
        description="Copy a restored database into the empty data directory of --node, "
                    "without lineage: started, the node becomes primary of the new "
                    "cluster's first epoch. Start it alone (a one-node config), then add "
                    "members (docs/operations.md#point-in-time-restore).")
    bf.add_argument("source", type=Path, help="the directory `hacluster restore` made")
    bf.add_argument("--config", help=config_help + ": the new cluster's")
    bf.add_argument("--node", required=True, help="the node to seed")
    bf.add_argument("--move", action="store_true", help="move the directory instead of "
                    "copying it (same file system)")


def parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--to-time: {text!r} is neither ISO 8601 nor unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def backup_action(args: argparse.Namespace, cfg: ClusterConfig, client: Any) -> int:
    if not cfg.backup.enabled:
        return _fail(f"{cfg.source}: backup.url is not set: continuous backup is off", 2)
    if str(args.dest) == "now":
        return backup_now(client, args.json, not args.no_wait)
    return backup_list(cfg, args.json)


def backup_now(client: Any, as_json: bool, wait: bool) -> int:
    from hacluster.client import HaclusterError
    wait_s = 3600 if wait else 0
    try:
        doc = client.admin(f"backup?wait_s={wait_s}", on_primary=True, timeout=wait_s + 30)
    except HaclusterError as exc:
        return _fail(f"base backup failed: {exc}")
    if as_json:
        print(json.dumps(doc, indent=2))
    elif "base_backup" in doc:
        b = doc["base_backup"]
        print(f"base backup {b['id']} of {doc['node']}: seq {b['seq']}, epoch {b['epoch']}, "
              f"{b['bytes'] / 1e6:.1f} MB, {b['files']} files in {b['seconds']:.1f} s")
    else:
        print(f"base backup started on {doc['node']}: follow it in `hacluster status --json` "
              "(backup)")
    return 0


def backup_list(cfg: ClusterConfig, as_json: bool) -> int:
    from hacluster.backup.objects import Archive
    from hacluster.backup.restore import catalog, describe
    from hacluster.tools.ctl import table
    try:
        doc = describe(catalog(Archive.from_config(cfg.backup)))
    except BackupError as exc:
        return _fail(str(exc))
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    rows = [[b["id"], b["seq"], b["epoch"], _when(b["created"]), f"{b['bytes'] / 1e6:.1f} MB",
             "yes" if b["complete"] and b["on_history"] else
             ("unfinished" if not b["complete"] else "superseded"), b["restorable_to"]]
            for b in doc["base_backups"]]
    print(table(["base backup", "seq", "epoch", "taken", "size", "usable", "restorable to"],
                rows))
    for r in doc["restorable"]:
        gap = f" (then a gap: seqs {r['gap_after'][0]}..{r['gap_after'][1]} missing)" \
            if r["gap_after"] else ""
        print(f"restorable: seqs {r['from_seq']}..{r['to_seq']}{gap}")
    print(f"{doc['segments']} WAL segments, {doc['segment_bytes'] / 1e6:.1f} MB, newest "
          f"archived {_when(doc['newest_segment_time'])}; "
          f"{len(doc['superseded_segments'])} superseded by the epoch history")
    return 0


def run(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    if args.command == "restore":
        return restore(args, cfg)
    return bootstrap_from(cfg, args.source, args.node, args.move)


def restore(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from hacluster.backup.objects import Archive
    from hacluster.backup.restore import restore as run_restore
    if not cfg.backup.enabled:
        return _fail(f"{cfg.source}: backup.url is not set: nothing to restore from", 2)
    try:
        to_time = parse_time(args.to_time) if args.to_time else None
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.to_seq is not None and args.to_seq < 1:
        return _fail("--to-seq: sequence numbers start at 1", 2)
    say = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        info = run_restore(Archive.from_config(cfg.backup), args.target, cfg.storage,
                           to_seq=args.to_seq, to_time=to_time, say=say)
    except BackupError as exc:
        return _fail(f"restore failed (nothing was written to {args.target}): {exc}")
    if args.json:
        print(json.dumps(info, indent=2))
    return 0


def bootstrap_from(cfg: ClusterConfig, source: Path, name: str, move: bool) -> int:
    from hacluster.backup.restore import RESTORE_INFO
    from hacluster.store import has_database
    try:
        node = cfg.node(name)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    info_path = source / RESTORE_INFO
    if not has_database(source) or not info_path.is_file():
        return _fail(f"{source} is not a directory `hacluster restore` made (no database or "
                     f"no {RESTORE_INFO})", 2)
    data_dir = node.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        return _fail(f"{data_dir} (data_dir of {name}) is not empty: a seeded node starts "
                     "with nothing else (no database, no Raft journal, no lineage)", 2)
    info = json.loads(info_path.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "db"
    staging = data_dir / ".db.seeding"
    if move:
        source.rename(staging)
    else:
        shutil.copytree(source, staging)
    info["seeded_at"] = time.time()
    info["seeded_node"] = name
    # No lineage.json: the data's epochs are the old cluster's, which this cluster's history
    # does not have. Unknown lineage is what its first primary records its epoch on top of.
    (data_dir / "restored-from.json").write_text(json.dumps(info, indent=1))
    (staging / RESTORE_INFO).unlink()
    staging.rename(db)
    print(f"{name}: seeded {db} from {source} (seq {info['seq']}, restored from "
          f"{info['source']}, base backup {info['base_backup']})")
    print(f"start {name} alone (a config listing only it, replication.mode async); once it "
          "is primary, add the other nodes with `hacluster member add` and start them: they "
          "copy it")
    return 0
