"""Telling systemd how the node is doing: ``sd_notify(3)`` without libsystemd.

Owns ``notify_systemd``: one datagram to ``$NOTIFY_SOCKET`` (``READY=1`` once the node serves,
``STOPPING=1`` when it begins to stop), so ``Type=notify`` units order their dependants right.
It must never fail the node: without the variable it does nothing, and a socket error is logged.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("hacluster.node")


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]       # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)
