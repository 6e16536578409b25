"""LazyFS: a FUSE file system that loses what was never made durable, to test power loss.

This module owns the server process (``python -m hacluster.testing.lazyfs BACKING MOUNTPOINT
--control SOCKET``; its first line above is that command's ``--help`` description): its
arguments, its control socket (JSON lines: ping, stats, power_loss, stop), and its shutdown (on
SIGTERM, on ``stop``, or when the client holding its stdin dies), which unmounts keeping every
write. It must never drop writes but on the ``power_loss`` command, and never exit leaving its
mount behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from hacluster.testing.lazyfs.server import Server

log = logging.getLogger(__name__)


def _control_loop(server: Server, sock: socket.socket) -> None:
    """Answer JSON-line commands: ping, stats, power_loss, stop."""
    while True:
        conn, _ = sock.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    op = json.loads(line)["op"]
                    if op == "ping":
                        reply: dict[str, Any] = {"ok": True}
                    elif op == "stats":
                        reply = {"ok": True, **server.stats()}
                    elif op == "power_loss":
                        reply = {"ok": True, **server.power_loss()}
                    elif op == "stop":
                        stream.write(b'{"ok": true}\n')
                        stream.flush()
                        return
                    else:
                        reply = {"ok": False, "error": f"unknown op {op!r}"}
                except Exception as e:
                    log.exception("control command failed")
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


def _watch_stdin() -> None:
    # The client holds our stdin; EOF means it died without stopping us: shut down cleanly.
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hacluster.testing.lazyfs",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--control", type=Path, required=True,
                        help="Unix socket taking JSON lines: ping, stats, power_loss, stop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="lazyfs %(levelname)s %(message)s")

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    os.umask(0)                                # the kernel already applied the caller's umask
    server = Server(args.backing, args.mountpoint, args.threads)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.mount_fs()
    try:
        # The socket appears only once the mount serves, so a successful ping means ready.
        sock.bind(os.fsencode(args.control))
        sock.listen(4)
        if args.exit_on_stdin_eof:
            threading.Thread(target=_watch_stdin, daemon=True).start()
        _control_loop(server, sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
        server.unmount_fs()
        server.close_records()
    return 0
