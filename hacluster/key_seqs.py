"""The per-key last-written seq records: where ``Store.write`` keeps them, and how a WAL
record splits back into the client writes it holds.

Owns ``SEQ_CF`` (the hidden column family), the record's key (``seq_key``) and value
(``SEQ_VALUE``), and ``writes_in``, which finds each write of a record again from
``Store.write``'s layout (a write's ops, then their seq records). Pure: no database handle,
no I/O. It must never split a record that is not in that layout: such a record is one write.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from hacluster.wal.batch import Op, WalBatch

# The per-key last-written seq: key ``cf name + NUL + key``, value the seq as 8 bytes big-endian.
# Column-family names cannot hold NUL, and a fixed prefix keeps a range of keys a range here.
SEQ_CF = "_hacluster.key_seq"
SEQ_VALUE = struct.Struct(">Q")
# A key present without a recorded seq was written before seqs were recorded: it reports 1.
UNRECORDED_SEQ = 1


def seq_key(cf: str, key: bytes) -> bytes:
    return cf.encode() + b"\0" + key


class Write(NamedTuple):
    """One write found in a WAL record: its seqs, and its ops without their seq records."""

    first_seq: int
    last_seq: int
    ops: list[Op]


def writes_in(batch: WalBatch, seq_cf: int) -> list[Write]:
    """The writes one WAL record holds, in order.

    On the node that made them a record is one write. A replica applies a run of the
    primary's writes as one record, so once it has been promoted a record of its WAL may hold
    several, and their seqs (what a client was answered, what a compare-and-set tests) are
    only found again through ``Store.write``'s layout: a write's n ops, then their n seq
    records in ``seq_cf``. A record not in that layout (written by a managed service, or
    before seqs were recorded) is taken as one write.
    """
    ops = batch.ops
    n = len(ops)
    if n != batch.count or seq_cf < 0:
        return _one_write(batch, seq_cf)
    out: list[Write] = []
    i = 0
    while i < n:
        j = i
        while j < n and ops[j][1] != seq_cf:
            j += 1
        k = j
        while k < n and ops[k][1] == seq_cf:
            k += 1
        if j == i or k - j != j - i:
            return _one_write(batch, seq_cf)
        # Every op takes one seq.
        out.append(Write(batch.seq + i, batch.seq + k - 1, ops[i:j]))
        i = k
    return out


def _one_write(batch: WalBatch, seq_cf: int) -> list[Write]:
    return [Write(batch.seq, batch.last_seq, [op for op in batch.ops if op[1] != seq_cf])]
