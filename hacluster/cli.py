"""The ``hacluster`` command line: argument parsing, logging set-up, and running a node.

Owns the commands and their exit codes (0 ok, 2 bad config or usage, 1 runtime failure). It must
never start a node on a config that failed validation, and never swallow SIGTERM: a node shuts
down cleanly (streams closed, DB closed) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from hacluster.config import ConfigError, load_config
from hacluster.node import Node, Role
from hacluster.store import StoreError

log = logging.getLogger("hacluster")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str, node: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"[{node}] " if node else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hacluster", description="High-availability cluster manager for RocksDB.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one node in the foreground",
                         description="Run one node of the cluster in the foreground.")
    run.add_argument("--config", required=True, help="cluster config file (YAML)")
    run.add_argument("--node", required=True, help="this node's name in the config")
    run.add_argument("--role", choices=["primary", "replica"],
                     help="override the config's static primary for this node")
    run.add_argument("--epoch", type=int, help="override cluster.epoch")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    up = sub.add_parser(
        "up", help="run every node of a config on this machine (local cluster)",
        description="Start one `hacluster run` process per node of the config, print where "
                    "they listen and how to try them, and stop them all on Ctrl-C/SIGTERM.")
    up.add_argument("--config", required=True, help="cluster config file (YAML)")
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config file; exit 0 if it is good.")
    check.add_argument("--config", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"hacluster: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(cfg.nodes)} nodes)")
        return 0
    if args.command == "up":
        from hacluster.local import run_local_cluster
        return run_local_cluster(cfg, args.config, args.log_level)
    try:
        cfg.node(args.node)
    except ConfigError as exc:
        print(f"hacluster: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format, args.node)
    primary = cfg.primary
    if args.role == "primary":
        primary = args.node
    elif args.role == "replica" and primary == args.node:
        print(f"hacluster: --role replica, but {args.node} is cluster.primary in "
              f"{args.config}", file=sys.stderr)
        return 2
    if args.epoch is not None and args.epoch < 1:
        print(f"hacluster: --epoch must be at least 1, got {args.epoch}", file=sys.stderr)
        return 2
    role = Role(primary=primary or None, epoch=cfg.epoch if args.epoch is None else args.epoch)
    try:
        return asyncio.run(_run(Node(cfg, args.node, role)))
    except StoreError as exc:
        log.error("%s", exc)
        return 1


async def _run(node: Node) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except OSError as exc:
        log.error("cannot start %s: %s", node.name, exc)
        await node.stop()
        return 1
    await stop.wait()
    log.info("%s shutting down", node.name)
    await node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
