"""May this frame be applied? The replica's decision, as a pure function of its position.

Owns the rules that keep a replica's history a prefix of the primary's: batches are applied
strictly in order, a batch already applied is skipped, a gap is an error, a frame from an epoch
older than the newest this replica knows is refused. No I/O here; the follower acts on the
verdict. It must never say APPLY for a batch that does not start exactly at applied + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hacluster.replication.frames import BatchFrame


class Verdict(Enum):
    APPLY = "apply"
    SKIP = "skip"            # already applied (a reconnect may resend the batch we ended on)
    GAP = "gap"              # the batch starts past applied + 1: something was lost in between
    OVERLAP = "overlap"      # the batch straddles our position: histories differ
    STALE_EPOCH = "stale-epoch"


@dataclass(frozen=True, slots=True)
class FrameCheck:
    verdict: Verdict
    reason: str


def check_frame(applied_seq: int, known_epoch: int, frame: BatchFrame) -> FrameCheck:
    if frame.epoch < known_epoch:
        return FrameCheck(Verdict.STALE_EPOCH, f"batch at seq {frame.seq} is from epoch "
                        f"{frame.epoch}, older than epoch {known_epoch} this node knows")
    if frame.seq == applied_seq + 1:
        return FrameCheck(Verdict.APPLY, f"batch [{frame.seq}, {frame.last_seq}] follows "
                        f"seq {applied_seq}")
    if frame.last_seq <= applied_seq:
        return FrameCheck(Verdict.SKIP, f"batch [{frame.seq}, {frame.last_seq}] already applied "
                        f"(at seq {applied_seq})")
    if frame.seq > applied_seq + 1:
        return FrameCheck(Verdict.GAP, f"batch starts at seq {frame.seq} but this node is at "
                        f"seq {applied_seq}: seqs {applied_seq + 1}..{frame.seq - 1} missing")
    return FrameCheck(Verdict.OVERLAP, f"batch [{frame.seq}, {frame.last_seq}] straddles this "
                    f"node's position {applied_seq}: histories differ")
