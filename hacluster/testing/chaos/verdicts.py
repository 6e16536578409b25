"""The chaos soak's own checks, beside ``check_all``: power losses, epochs, availability.

Owns ``disk_seq`` (the latest seq a stopped node's database kept, opened read-only),
``durable_gaps`` (rule 5 per power loss), ``epoch_reuse`` (an epoch number given out twice),
the re-check with a larger budget of keys the linearizability check left undecided,
``availability`` and ``failover_times``. Pure functions of the recorded ops, cuts and records
(``disk_seq`` only reads): it must never change a database, and never report what the recorded
times cannot prove.
"""

from __future__ import annotations

import ast
import gc
import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rocksdict

from hacluster.testing.chaos.kinds import RECHECK_SECONDS, RECHECK_STATES
from hacluster.testing.chaos.results import PowerCut
from hacluster.testing.history import History, Op, linearizable


def disk_seq(db_dir: Path) -> tuple[int | None, str]:
    """The latest sequence number of a stopped node's database (WAL replayed, read-only)."""
    if not db_dir.exists():
        return None, "no db/ directory"
    opts = rocksdict.Options(raw_mode=True)
    try:
        names = rocksdict.Rdict.list_cf(str(db_dir), opts)
        db = rocksdict.Rdict(str(db_dir), opts, column_families={
            n: rocksdict.Options(raw_mode=True) for n in names if n != "default"},
            access_type=rocksdict.AccessType.read_only())
    except Exception as exc:     # rocksdict raises plain Exceptions for a damaged database
        return None, f"{type(exc).__name__}: {exc}"
    try:
        return int(db.latest_sequence_number()), ""
    finally:
        db.close()
        del db
        gc.collect()             # the handle must be gone before the node opens it


def durable_gaps(acks: list[Op], cuts: Iterable[PowerCut]) -> list[tuple[int, str]]:
    """Rule 5 per power loss: acknowledged writes its disk had to keep and did not.

    Each entry is (writes missing, a sentence). Writes of one epoch carry rising seqs and
    RocksDB recovers a prefix of its WAL, so a write is on the disk exactly when its seq is at
    most the database's latest seq.
    """
    out = []
    for cut in cuts:
        if cut.role == "other" or cut.epoch is None:
            continue
        if cut.disk_seq is None:
            out.append((1, f"{cut.node} ({cut.role} of epoch {cut.epoch}) had no readable "
                           f"database after its power loss: {cut.disk_error}"))
            continue
        if cut.role == "primary":
            due = [op for op in acks if op.node == cut.node and op.epoch == cut.epoch
                   and op.end < cut.at]
        else:
            due = [op for op in acks if op.epoch == cut.epoch and op.end < cut.confirmed]
        missing = [op for op in due if op.seq is not None and op.seq > cut.disk_seq]
        probe_lost = cut.probe_seq is not None and cut.probe_seq > cut.disk_seq
        if missing or probe_lost:
            example = (missing[-1].describe() if missing
                       else f"the probe write it confirmed, seq {cut.probe_seq}")
            out.append((len(missing) + probe_lost,
                        f"{cut.node} ({cut.role} of epoch {cut.epoch}) kept seq "
                        f"{cut.disk_seq} through its power loss but had to keep "
                        f"{len(missing) + probe_lost} acknowledged writes past it, e.g. "
                        f"{example}"))
    return out


def epoch_reuse(acks: list[Op], records: dict[int, tuple[str, int]],
                cuts: Iterable[PowerCut], *, sync: bool) -> list[str]:
    """An epoch number given out twice, seen from the acknowledgements.

    An epoch has one primary, so its acks all come from one node, the one its record names;
    one (epoch, seq) is one write (``seq_anomalies`` reports these too, among seqs out of
    order); writes sent after an epoch's holder lost power are acknowledged only in newer
    epochs (rule 3); and in sync mode every epoch's acks carry seqs above every older epoch's
    (a new epoch starts past the acknowledged floor, rule 2), so no seq is handed out again.
    """
    out = []
    by_epoch: dict[int, list[Op]] = {}
    for op in acks:
        if op.epoch is not None:
            by_epoch.setdefault(op.epoch, []).append(op)
    for epoch, ops in sorted(by_epoch.items()):
        names = sorted({op.node for op in ops})
        if len(names) > 1:
            out.append(f"epoch {epoch} acknowledged writes on {', '.join(names)}")
        elif epoch in records and records[epoch][0] != names[0]:
            out.append(f"epoch {epoch} belongs to {records[epoch][0]} by its record, but "
                       f"{names[0]} acknowledged writes in it")
        first: dict[int, Op] = {}
        for op in ops:
            if op.seq is not None and first.setdefault(op.seq, op) is not op:
                out.append(f"epoch {epoch}, seq {op.seq} acknowledged for two writes: "
                           f"{first[op.seq].describe()} and {op.describe()}")
    if sync:
        highest = -1
        for epoch, ops in sorted(by_epoch.items()):
            seqs = [op.seq for op in ops if op.seq is not None]
            if seqs and min(seqs) <= highest:
                out.append(f"epoch {epoch} acknowledged seq {min(seqs)}, not above seq "
                           f"{highest} acknowledged in an earlier epoch")
            highest = max([highest, *seqs])
    for cut in cuts:
        if cut.role != "primary" or cut.epoch is None:
            continue
        late = [op for op in acks if op.start > cut.at and op.epoch is not None
                and op.epoch <= cut.epoch]
        if late:
            out.append(f"{len(late)} writes sent after {cut.node}, primary of epoch "
                       f"{cut.epoch}, lost power were acknowledged in that epoch or an older "
                       f"one, e.g. {late[0].describe()}")
    return out


_KEY = re.compile(r"key ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def recheck_linearizability(ops: list[Op], wrong: list[str],
                            unknown: list[str]) -> tuple[list[str], list[str]]:
    """Check the keys check_all's budget left undecided again, with a larger budget."""
    keys = set()
    for text in unknown:
        found = _KEY.match(text)
        if found:
            keys.add(ast.literal_eval(found.group(1)))
    if not keys:
        return wrong, unknown
    more_wrong, still = linearizable([op for op in ops if op.key in keys],
                                     max_states=RECHECK_STATES, seconds=RECHECK_SECONDS)
    return wrong + more_wrong, still


def availability(history: History, start: float, end: float,
                 step: float = 0.1) -> tuple[float, list[tuple[float, int]]]:
    """Fraction of ``step`` windows in which some write was acknowledged; errors per second."""
    bins = max(1, int((end - start) / step))
    acked = [False] * bins
    errors: dict[int, int] = {}
    for op in history.ops():
        if op.kind != "put":
            continue
        i = int((op.end - start) / step)
        if op.acked and 0 <= i < bins:
            acked[i] = True
        elif not op.acked:
            second = int(op.end - start)
            errors[second] = errors.get(second, 0) + 1
    return sum(acked) / bins, sorted((float(s), n) for s, n in errors.items())


def failover_times(history: History) -> tuple[list[dict[str, Any]], list[tuple[float, int, str]]]:
    """Per epoch change (client view): last ack of the old epoch to first ack of the new."""
    first: dict[int, tuple[float, str]] = {}
    last: dict[int, float] = {}
    for op in history.acked():
        if op.epoch is None:
            continue
        if op.epoch not in first or op.end < first[op.epoch][0]:
            first[op.epoch] = (op.end, op.node)
        last[op.epoch] = max(last.get(op.epoch, op.end), op.end)
    epochs = sorted(first)
    out = []
    for prev, new in itertools.pairwise(epochs):
        out.append({"from_epoch": prev, "to_epoch": new,
                    "seconds": max(0.0, first[new][0] - last[prev])})
    return out, [(first[e][0], e, first[e][1]) for e in epochs]
