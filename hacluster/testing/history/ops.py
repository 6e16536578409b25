"""The write history's records: ``Op``, one attempt as its client saw it, and ``History``.

Owns ``Op`` (key, node asked, monotonic start and end, HTTP status, epoch and seq, kind and
value, and its classification: acknowledged, answered, refused, ``outcome``), the thread-safe,
append-only ``History`` with its JSON file (``FORMAT``, ``VERSION``; saved atomically), and the
prefixes of hot and register keys. It must never talk to a node, and never call an op
acknowledged that its client did not get a 200 for.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hacluster.testing.linearizability import Outcome

FORMAT = "hacluster-history"
HOT = "hot-"           # hot keys: overwritten with a rising counter and read back
REG = "reg-"           # register keys: shared by every writer, written and read at random
VERSION = 1


@dataclass(frozen=True, slots=True)
class Op:
    """One write attempt as its client saw it."""

    key: str
    node: str              # the node asked
    start: float           # time.monotonic() before the request was sent
    end: float             # time.monotonic() after the response was read (or the error)
    status: int            # HTTP status; 0 for a connection error or timeout
    epoch: int | None = None   # from a 200 answer
    seq: int | None = None     # from a 200 answer
    note: str = ""         # for people: the error or refusal text
    kind: str = "put"      # "put", or "read" (a GET of a hot key)
    value: str | None = None   # hot keys: the counter written, or read (None: absent)

    @property
    def acked(self) -> bool:
        """A write the client was told is done (reads are never acknowledgements)."""
        return self.status == 200 and self.kind == "put"

    @property
    def answered(self) -> bool:
        """A read that returned the key's value, or that it is absent."""
        return self.kind == "read" and self.status in (200, 404)

    @property
    def refused(self) -> bool:
        """A write the node certainly did not apply.

        A connection refused (nothing was sent), a redirect, a 4xx (checked before writing),
        a 503 that does not say "outcome unknown" (the write gate shut before the local write)
        and a 507 (disk full, refused before writing). Anything else that is not a 200 (a
        timeout or a connection broken after the request went out, a 503 "outcome unknown", a
        500, a proxy's 502/504) may have been applied.
        """
        if self.kind != "put" or self.status == 200:
            return False
        if self.status == 0:
            return self.note.startswith("ConnectionRefusedError")
        if self.status == 503:
            return not self.note.startswith("outcome unknown")
        return self.status in (307, 507) or 400 <= self.status < 500

    @property
    def outcome(self) -> Outcome:
        """"ok": a write that took effect inside [start, end], or an answered read; "failed": a
        refused write, or a read that was not answered; "unknown": a write that may have taken
        effect at any time after its start, or never."""
        if self.kind == "read":
            return "ok" if self.answered else "failed"
        if self.acked:
            return "ok"
        return "failed" if self.refused else "unknown"

    def span(self) -> str:
        return f"request {self.start:.3f}..{self.end:.3f}"

    def detail(self) -> str:
        told = (f"epoch {self.epoch}, seq {self.seq}" if self.acked
                else f"status {self.status}")
        return f"{self.node}, {told}, {self.span()}"

    def describe(self) -> str:
        return f"{self.key!r} ({self.detail()})"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Op:
        return cls(key=str(doc["key"]), node=str(doc["node"]), start=float(doc["start"]),
                   end=float(doc["end"]), status=int(doc["status"]),
                   epoch=None if doc.get("epoch") is None else int(doc["epoch"]),
                   seq=None if doc.get("seq") is None else int(doc["seq"]),
                   note=str(doc.get("note", "")), kind=str(doc.get("kind", "put")),
                   value=None if doc.get("value") is None else str(doc["value"]))


class History:
    """An append-only list of Ops, safe to append to from several threads."""

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = list(ops)

    def append(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def extend(self, ops: Iterable[Op]) -> None:
        new = list(ops)
        with self._lock:
            self._ops.extend(new)

    def ops(self) -> list[Op]:
        """A snapshot: later appends do not change it."""
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def acked(self) -> list[Op]:
        return [op for op in self.ops() if op.acked]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically (a reader never sees half a file)."""
        target = Path(path)
        doc = {"format": FORMAT, "version": VERSION, "clock": "CLOCK_MONOTONIC",
               "ops": [asdict(op) for op in self.ops()]}
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        if doc.get("version") != VERSION:
            raise ValueError(f"{path}: {FORMAT} version {doc.get('version')}, "
                             f"expected {VERSION}")
        return cls(Op.from_json(op) for op in doc["ops"])
