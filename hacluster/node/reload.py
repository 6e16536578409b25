"""SIGHUP: credentials and certificates again, without a restart.

Owns what a node takes from its config file while it runs: the accepted tokens
(``auth.tokens`` and the legacy ``cluster.token``: the API checks the next request against
them), this node's own replication token (sent from the follower's next request on) and the
TLS files (new connections get them). Rotating a token or a certificate is then an edit and a
SIGHUP on each node, with no restart and no failover. It must never apply a config that fails
validation (the node keeps what it has and logs why), and never change anything else while
running: other differences (addresses, timings, the Raft password) are logged as needing a
restart.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from hacluster.config import ClusterConfig, ConfigError, load_config
from hacluster.replication.follower import Follower
from hacluster.security.tls import Contexts, TlsError

log = logging.getLogger("hacluster.node")

LIVE = ("token", "auth", "tls")      # what a SIGHUP applies; the rest needs a restart


class Reloadable(Protocol):
    """What a reload touches of the node (``hacluster.node.Node`` is one)."""

    name: str
    cfg: ClusterConfig
    tls: Contexts | None
    follower: Follower | None


def reload_credentials(node: Reloadable) -> bool:
    """Apply the config file's credentials and certificates; False (nothing changed) when
    the file does not validate or a certificate cannot be loaded."""
    try:
        new = load_config(node.cfg.source)
    except ConfigError as exc:
        log.error("%s: SIGHUP: the config does not validate, keeping the current "
                  "credentials: %s", node.name, exc)
        return False
    if new.tls.enabled != node.cfg.tls.enabled:
        log.error("%s: SIGHUP: turning TLS on or off needs a restart; nothing reloaded",
                  node.name)
        return False
    if node.tls is not None:
        try:
            node.tls.tls = new.tls.for_node(node.name)
            node.tls.reload()
        except TlsError as exc:
            log.error("%s: SIGHUP: keeping the current certificates: %s", node.name, exc)
            return False
    others = [f.name for f in dataclasses.fields(new) if f.name not in (*LIVE, "source")
              and getattr(new, f.name) != getattr(node.cfg, f.name)]
    if others:
        log.warning("%s: SIGHUP: changes to %s take effect at the next restart", node.name,
                    ", ".join(others))
    node.cfg = dataclasses.replace(node.cfg, token=new.token, auth=new.auth, tls=new.tls)
    if node.follower is not None and not new.tls.peer_client_auth and new.peer_token:
        node.follower.headers = {"Authorization": f"Bearer {new.peer_token}"}
    log.info("%s: SIGHUP: credentials reloaded (%d role tokens%s)", node.name,
             len(new.auth.tokens), ", and the legacy cluster token" if new.token else "")
    return True
