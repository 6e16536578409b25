"""Bearer tokens by role: their format, how they are stored (as hashes), and how one is checked.

Owns the roles (``read`` < ``write`` < ``admin``; ``replication`` and ``metrics`` apart), what
each grants, the token format (``hct_<id>_<secret>``: the id names the token in audit lines
and picks the stored hash, the secret is 32 random bytes), ``new_token`` and ``TokenBook``,
which turns an ``Authorization`` header into a ``Principal`` in constant time. Tokens are
high-entropy random strings, so one SHA-256 is the right hash (a slow password hash would only
cost every request). It must never log, return or compare a token except through its hash,
and never grant a role that no configured token or certificate carries.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    READ = "read"                 # GET, scans, cluster views
    WRITE = "write"               # + PUT, DELETE, batches
    ADMIN = "admin"               # + operator actions (switchover, failover, members, backup)
    REPLICATION = "replication"   # the WAL stream, checkpoints, acks: nodes only
    METRICS = "metrics"           # /metrics only


# What a credential of each role may do. Replication grants nothing a client uses, and no
# client role grants replication: a leaked application token cannot post acknowledgements.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.READ: frozenset({Role.READ}),
    Role.WRITE: frozenset({Role.READ, Role.WRITE}),
    Role.ADMIN: frozenset({Role.READ, Role.WRITE, Role.ADMIN, Role.METRICS}),
    Role.REPLICATION: frozenset({Role.REPLICATION}),
    Role.METRICS: frozenset({Role.METRICS}),
}
ALL_ROLES = frozenset(Role)

TOKEN_RE = re.compile(r"^hct_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
ID_RE = re.compile(r"^[0-9a-f]{8}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One accepted token as the config stores it: never the token itself."""

    id: str
    role: Role
    sha256: str                   # hex digest of the whole token
    name: str = ""                # who holds it, for audit lines ("frontend", "ops-alice")

    def describe(self) -> str:
        return f"token {self.id}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, as far as its credentials show."""

    who: str                      # "token 3f9a0c1e (frontend)", "certificate n2", ...
    roles: frozenset[Role]
    node: str | None = None       # a cluster member proven by its certificate


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token(role: Role, name: str = "") -> tuple[str, TokenEntry]:
    """A fresh token and the entry that accepts it (the token is shown once, never stored)."""
    token_id = secrets.token_hex(4)
    token = f"hct_{token_id}_{secrets.token_urlsafe(32)}"
    return token, TokenEntry(token_id, role, digest(token), name)


class TokenBook:
    """The tokens a node accepts: role tokens by id, and the legacy shared cluster token."""

    def __init__(self, entries: tuple[TokenEntry, ...] = (), legacy: str | None = None) -> None:
        self._by_id: dict[str, TokenEntry] = {e.id: e for e in entries}
        self._legacy = digest(legacy) if legacy else None
        # Compared against on every miss too, so a wrong token costs the same either way.
        self._dummy = digest("hct_00000000_" + "0" * 43)

    def principal(self, token: str) -> Principal | None:
        """Who ``token`` stands for, or None for a token that is not accepted."""
        given = digest(token)
        m = TOKEN_RE.match(token)
        entry = self._by_id.get(m.group(1)) if m else None
        if hmac.compare_digest(given, entry.sha256 if entry else self._dummy) and entry:
            return Principal(entry.describe(), GRANTS[entry.role])
        if self._legacy is not None and hmac.compare_digest(given, self._legacy):
            # One secret for everything, as before roles existed: deprecated (warned at start).
            return Principal("the cluster token", ALL_ROLES)
        return None

    @property
    def empty(self) -> bool:
        return not self._by_id and self._legacy is None
