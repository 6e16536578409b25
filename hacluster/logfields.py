"""The node's identity on every log line: ``node``, ``role``, ``epoch`` and ``seq`` fields.

Owns one process-wide provider, registered by the node when it is built (``attach``), and the
``logging.Filter`` (``NodeFields``) that copies what it provides onto each record, which the
JSON log format (``hacluster run --log-format json``) writes as fields. The provider must be
cheap (it runs for every line) and must never raise or block: a line logged from any thread
(the Raft thread, a worker thread) gets the fields, or the last ones known, never an error.
It must never touch the database from a thread other than the event loop's: off that thread
the seq is the one the loop's last line saw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

FIELDS = ("node", "role", "epoch", "seq")


@dataclass(frozen=True, slots=True)
class Fields:
    node: str | None = None
    role: str | None = None        # "primary" or "replica", as /status says
    epoch: int | None = None
    seq: int | None = None


Provider = Callable[[bool], Fields]    # argument: called on the event loop's thread


class _Store(Protocol):
    def latest_seq(self) -> int: ...


class NodeLike(Protocol):
    """What ``attach`` reads of the node (a protocol: no import of the node's module)."""

    name: str

    @property
    def is_primary(self) -> bool: ...
    @property
    def store(self) -> _Store | None: ...
    def status_epoch(self) -> int: ...


@dataclass
class _Registry:
    provider: Provider | None = None
    thread: int | None = None          # the thread that may read the database
    last: Fields = Fields()


_registry = _Registry()


def register(provider: Provider | None, node: str | None = None) -> None:
    """Install ``provider`` for this process (None: back to ``node`` alone); the calling
    thread is the one whose lines may read the database."""
    _registry.provider = provider
    _registry.thread = threading.get_ident()
    _registry.last = Fields(node=node)


def attach(node: NodeLike) -> None:
    """Register ``node`` as the source of the fields (called from ``Node.__init__``)."""

    def provide(on_loop: bool) -> Fields:
        primary = node.is_primary
        last = _registry.last
        if on_loop:
            store = node.store
            seq = store.latest_seq() if store is not None else last.seq
        else:
            seq = last.seq
        return Fields(node.name, "primary" if primary else "replica", node.status_epoch(), seq)

    register(provide, node.name)


def current() -> Fields:
    """The fields for a line logged now, on this thread; never raises."""
    reg = _registry
    provider = reg.provider
    if provider is None:
        return reg.last
    try:
        fields = provider(threading.get_ident() == reg.thread)
    except Exception:        # a log line must never fail for its fields
        return reg.last
    reg.last = fields
    return fields


class NodeFields(logging.Filter):
    """Adds ``node``, ``role``, ``epoch`` and ``seq`` to every record it sees (None while no
    node is registered, ``node`` from ``default_node`` then); never drops a record."""

    def __init__(self, default_node: str | None = None) -> None:
        super().__init__()
        if _registry.provider is None:
            _registry.last = Fields(node=default_node)

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        record.node = fields.node
        record.role = fields.role
        record.epoch = fields.epoch
        record.seq = fields.seq
        return True


def as_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a filter put on ``record`` (all None when no filter did)."""
    return {name: getattr(record, name, None) for name in FIELDS}
