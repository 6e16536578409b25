"""Which received frames a replica writes to RocksDB together: runs of consecutive batches.

Owns the grouping of one read from the stream into runs: consecutive batch frames of one epoch,
whose WriteBatches add up to at most a frame's limit, are applied as one RocksDB write (one WAL
record and one fsync'able append here, one sequence-number proof, one acknowledgement) instead
of one write each; any other frame (hello, heartbeat, error) stands alone, between runs, in
order. Pure: frames in, groups out. It must never reorder frames, nor put batches of two epochs
in one run (the lineage records an epoch's first seq before that epoch's first write).
"""

from __future__ import annotations

from collections.abc import Sequence

from hacluster.replication.frames import BatchFrame, ErrorFrame, Frame, Heartbeat, Hello

# Any frame but a batch: what stands alone between runs.
ControlFrame = Hello | Heartbeat | ErrorFrame


def split_runs(received: Sequence[Frame],
               max_bytes: int) -> list[list[BatchFrame] | ControlFrame]:
    """``received`` in order, each batch frame in a run (a list), each other frame alone.

    A run is cut at a non-batch frame, at an epoch change and before the frame that would take
    its WriteBatches past ``max_bytes`` (a single larger frame is a run of its own).
    """
    out: list[list[BatchFrame] | ControlFrame] = []
    run: list[BatchFrame] = []
    size = 0
    for frame in received:
        if not isinstance(frame, BatchFrame):
            if run:
                out.append(run)
                run, size = [], 0
            out.append(frame)
            continue
        if run and (frame.epoch != run[0].epoch or size + len(frame.wb) > max_bytes):
            out.append(run)
            run, size = [], 0
        run.append(frame)
        size += len(frame.wb)
    if run:
        out.append(run)
    return out
