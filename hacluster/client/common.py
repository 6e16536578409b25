"""What both clients and the command-line tools share: construction, the TLS context, the token.

Owns ``ClientBase`` (the arguments and state both clients take), reading
``$HACLUSTER_CA_FILE`` and ``$HACLUSTER_TOKEN``. It must never do I/O with a node, and never
fall back to an unverified connection.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from hacluster.client import rules
from hacluster.config.model import TOKEN_ENV, ClusterConfig

CA_FILE_ENV = "HACLUSTER_CA_FILE"


def client_token(cfg: ClusterConfig) -> str | None:
    """The token a tool presents: ``$HACLUSTER_TOKEN`` (a role token), else the legacy
    ``cluster.token`` of the config."""
    return os.environ.get(TOKEN_ENV) or cfg.token


def tls_context(ca_file: str | os.PathLike[str] | None,
                cert_file: str | os.PathLike[str] | None,
                key_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """Verifies nodes (host names included) against ``ca_file``, default
    ``$HACLUSTER_CA_FILE``, else the system's trust store; presents ``cert_file`` if given."""
    ca = ca_file or os.environ.get(CA_FILE_ENV) or None
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class ClientBase:
    """What both clients hold: the nodes, the token, the rules' settings, the TLS context.

    ``timeout``: seconds one attempt waits for an answer; ``connect_timeout``: for a
    connection; ``failover_timeout``: how long a call keeps looking for the primary (each call
    may pass its own ``deadline``). Over https the nodes are verified against ``ca_file``
    (default ``$HACLUSTER_CA_FILE``, else the system's trust store); ``cert_file``/``key_file``
    present a client certificate. ``pool_size``: connections kept per node.
    """

    POOL_SIZE = 8

    def __init__(self, urls: Sequence[str], token: str | None, *,
                 timeout: float = rules.REQUEST_TIMEOUT_S,
                 connect_timeout: float = rules.CONNECT_TIMEOUT_S,
                 failover_timeout: float = rules.DEADLINE_S, retry_unknown: bool = False,
                 ca_file: str | os.PathLike[str] | None = None,
                 cert_file: str | os.PathLike[str] | None = None,
                 key_file: str | os.PathLike[str] | None = None,
                 pool_size: int | None = None) -> None:
        self.nodes = rules.Nodes(list(urls))
        self.token = token
        self.settings = rules.Settings(timeout, connect_timeout, failover_timeout,
                                       retry_unknown)
        self.ssl = tls_context(ca_file, cert_file, key_file)
        self.pool_size = pool_size or self.POOL_SIZE

    @classmethod
    def from_config(cls, path: str | Path, **kw: Any) -> Self:
        """The nodes' API URLs and ``tls.ca_file`` of a cluster config file; the token from
        ``$HACLUSTER_TOKEN``, else the config's legacy ``cluster.token``."""
        from hacluster.config import load_config
        cfg = load_config(path)
        kw.setdefault("ca_file", cfg.tls.ca_file)
        return cls([n.api.url for n in cfg.nodes], client_token(cfg), **kw)

    @property
    def urls(self) -> list[str]:
        return self.nodes.urls

    @property
    def leader_url(self) -> str | None:
        return self.nodes.leader_url

    @leader_url.setter
    def leader_url(self, url: str | None) -> None:
        self.nodes.leader_url = url

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        hdrs = dict(extra or {})
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        return hdrs

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + (self.settings.deadline if deadline is None else deadline)
