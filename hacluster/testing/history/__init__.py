"""Client-side write history and the checks run over it: what clients were told, judged.

Owns recording every write attempt a test client makes (``Op``: the key, the node asked, when
the request started and when its response ended on CLOCK_MONOTONIC, the HTTP status, and the
epoch and seq a 200 answer carried); the thread-safe, append-only ``History``, saved to and
loaded from JSON so that a writer running in another process or network namespace can record
and the test judges; the ``Writer`` that keeps writing unique keys to whichever node accepts
them (or, in register mode, writes and reads back a few shared keys); how each op's outcome is
classified (``Op.outcome``: took effect, certainly did not, or unknown); and pure checkers over
recorded ops: acknowledged writes lost, split brain (two epochs acknowledging in an order only
two writable primaries can produce), losses missing from the divergent-tail files,
acknowledgements after a fence, sequence numbers out of order, stale reads of hot keys, and
reads no order of the writes explains (``linearizable``, by ``linearizability.check``).

It must never trust the server's word over the recorded responses (a write is acknowledged
when, and only when, its client got a 200; status pages and logs are not evidence), never fake
the network (the writer speaks HTTP to real node processes), and never report a violation the
recorded times cannot prove: the server acknowledged an op somewhere inside its
``[start, end]``, so every ordering is judged on those bounds alone. CLOCK_MONOTONIC is shared by
all processes of one machine (namespaces included), so histories of several processes compare.

The package: ``ops`` (``Op`` and ``History``), ``writer`` (``put_once``, ``read_once``,
``Writer``, ``python -m hacluster.testing.history``) and ``checks`` (the checkers and
``check_all``). This ``__init__`` only re-exports their public names; it must never hold logic
of its own.
"""

from __future__ import annotations

from hacluster.testing.history.checks import (
    Fence,
    Verdict,
    acked_after,
    check_all,
    divergent_tail_keys,
    linearizable,
    lost_acked,
    overlapping_epochs,
    seq_anomalies,
    stale_reads,
    unreported_losses,
)
from hacluster.testing.history.ops import FORMAT, HOT, REG, VERSION, History, Op
from hacluster.testing.history.writer import (
    Endpoint,
    Target,
    Writer,
    main,
    put_once,
    read_once,
    write_for,
)

__all__ = [
    "FORMAT",
    "HOT",
    "REG",
    "VERSION",
    "Endpoint",
    "Fence",
    "History",
    "Op",
    "Target",
    "Verdict",
    "Writer",
    "acked_after",
    "check_all",
    "divergent_tail_keys",
    "linearizable",
    "lost_acked",
    "main",
    "overlapping_epochs",
    "put_once",
    "read_once",
    "seq_anomalies",
    "stale_reads",
    "unreported_losses",
    "write_for",
]
