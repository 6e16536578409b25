"""Why an operator's request to the consensus layer was turned down.

Owns the exceptions the control loop raises for switchover, failover, membership and pause
requests, which the admin API maps to HTTP answers. It must never hold logic.
"""

from __future__ import annotations


class RequestRefused(Exception):
    """The request was refused as unsafe or impossible; nothing changed (a switchover's
    primary stays primary)."""


class NotCommitted(RequestRefused):
    """Raft did not commit the change in time: it may still take effect; retry to find out."""


class SettingsInvalid(RequestRefused):
    """A dynamic configuration change names a key that is not dynamic, or a value the
    config's schema refuses (the message names the key, as a bad file's would)."""

