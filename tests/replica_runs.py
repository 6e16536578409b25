"""What tests of promoted replicas share: a store whose WAL records hold runs of another
store's writes, as a replica writes them (``Follower._apply_run``: a run of frames, one
RocksDB write)."""

from __future__ import annotations

from collections.abc import Sequence

from hacluster.store import Store
from hacluster.wal.reader import WalReader


def apply_as_runs(origin: Store, target: Store, sizes: Sequence[int] = ()) -> None:
    """Write ``origin``'s WAL records from seq 1 into ``target``, ``sizes[i]`` records per
    write in turn, then the rest as one write (a size of 0 stops there: the rest is left)."""
    with WalReader(origin.db_dir, 1, decode_ops=False) as reader:
        batches = reader.read()
    handles = target.handles_for(origin.column_families)
    i = 0
    for size in [*sizes, len(batches)]:
        run = batches[i:i + size]
        if not run:
            break
        wb = None
        for b in run:
            wb = target.prepare(b.payload, handles, into=wb)
        assert wb is not None
        target.commit(wb, run[0].seq, run[-1].last_seq - run[0].seq + 1, sync=False)
        i += size
