"""Divergent tails: writes a former primary made that no current primary has, kept in a file.

Owns ``<data_dir>/divergent/*.cbor``: when a node must give up data past the point where a
later epoch took over (async replication lost them on failover), its own WAL still holds those
batches; they are decoded and written to a CBOR file (node, epoch, sequence numbers, and every
op with its column family, key and value) before the node re-bootstraps, and listed in status.
It must never drop such writes silently: if the WAL no longer holds all of them, the file says
so (``complete: false``) and the caller keeps the old database aside.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cbor2

from hacluster.consensus.lineage import Divergence
from hacluster.store import Store
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, SINGLE_DELETE
from hacluster.wal.errors import WalError, WalGone
from hacluster.wal.reader import WalReader

KIND_NAMES = {PUT: "put", DELETE: "delete", SINGLE_DELETE: "single_delete",
              DELETE_RANGE: "delete_range"}


def save_divergent_tail(data_dir: Path, node: str, store: Store,
                        div: Divergence) -> tuple[Path, bool, int]:
    """Write the batches [div.first_seq, div.last_seq] to a file; (path, complete, op count)."""
    names = store.column_families
    batches: list[dict[str, Any]] = []
    error = None
    reader = WalReader(store.db_dir, div.first_seq)
    try:
        while reader.next_seq <= div.last_seq:
            got = reader.read()
            if not got:
                error = f"WAL ended at seq {reader.next_seq - 1}"
                break
            for b in got:
                if b.seq > div.last_seq:
                    break
                batches.append({"seq": b.seq, "ops": [
                    [KIND_NAMES[kind], names[cf] if cf < len(names) else cf, key, value]
                    for kind, cf, key, value in b.ops]})
    except (WalError, WalGone) as exc:
        error = str(exc)
    finally:
        reader.close()
    ops = sum(len(b["ops"]) for b in batches)
    complete = error is None
    doc = {"node": node, "epoch": div.epoch, "first_seq": div.first_seq,
           "last_seq": div.last_seq, "saved_at": time.time(), "complete": complete,
           "error": error, "ops": ops, "batches": batches}
    folder = data_dir / "divergent"
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch{div.epoch}-seq{div.first_seq}-{div.last_seq}.cbor"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        cbor2.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path, complete, ops


def list_divergent_tails(data_dir: Path) -> list[dict[str, Any]]:
    """What status shows: one entry per saved tail (without the ops themselves)."""
    folder = data_dir / "divergent"
    out = []
    for path in sorted(folder.glob("*.cbor")) if folder.exists() else []:
        try:
            with open(path, "rb") as f:
                doc = cbor2.load(f)
            out.append({"file": str(path), "epoch": doc["epoch"], "first_seq": doc["first_seq"],
                        "last_seq": doc["last_seq"], "ops": doc["ops"],
                        "complete": doc["complete"]})
        except (OSError, ValueError, KeyError, cbor2.CBORDecodeError) as exc:
            out.append({"file": str(path), "error": f"unreadable: {exc}"})
    return out
