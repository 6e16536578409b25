"""The ``hacluster`` command line: argument parsing, logging set-up, and running a node.

Owns the commands and their exit codes (0 ok, 2 bad config or usage, 1 runtime failure). It must
never start a node on a config that failed validation, and never swallow SIGTERM: a node shuts
down cleanly (streams closed, DB closed) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import resource
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hacluster import logfields
from hacluster.config import ClusterConfig, ConfigError, load_config
from hacluster.managed.options import ManagedDbError
from hacluster.node import Node
from hacluster.role import VERSION, Role
from hacluster.security.tls import TlsError
from hacluster.store import StoreError
from hacluster.tools import backup_cli, config_cli, credentials

log = logging.getLogger("hacluster")

CONFIG_ENV = "HACLUSTER_CONFIG"
DEFAULT_CONFIGS = (Path("cluster.yaml"), Path("/etc/hacluster/cluster.yaml"))
CONFIG_HELP = (f"cluster config file (YAML); default ${CONFIG_ENV}, else ./cluster.yaml if it "
               "exists, else /etc/hacluster/cluster.yaml")


def config_path(given: str | None, env: Mapping[str, str] = os.environ
                ) -> tuple[str | None, str]:
    """The config file to use, and where it was looked for (for the error when there is none).

    ``--config``, else ``$HACLUSTER_CONFIG``, else ``./cluster.yaml`` if it exists, else
    ``/etc/hacluster/cluster.yaml`` if it exists; None when none of them applies.
    """
    if given:
        return given, f"--config {given}"
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV], f"${CONFIG_ENV}={env[CONFIG_ENV]}"
    for candidate in DEFAULT_CONFIGS:
        if candidate.is_file():
            return str(candidate), str(candidate)
    return None, (f"no --config, no ${CONFIG_ENV}, and neither ./cluster.yaml nor "
                  "/etc/hacluster/cluster.yaml exists")


def confirm(question: str, yes: bool) -> int | None:
    """None to go ahead; else the exit code (2: refused without a terminal, 1: answered no)."""
    if yes:
        return None
    if not sys.stdin.isatty():
        print(f"hacluster: {question}: refusing without a terminal to ask on; pass --yes",
              file=sys.stderr)
        return 2
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print("hacluster: not confirmed; nothing done", file=sys.stderr)
    return 1


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage(),
               **logfields.as_dict(record)}    # node, role, epoch, seq (NodeFields' filter)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str, node: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(logfields.NodeFields(node))
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
    parser.add_argument("--version", action="version", version=f"hacluster {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one node in the foreground",
                         description="Run one node of the cluster in the foreground.")
    run.add_argument("--config", help=CONFIG_HELP)
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
    up.add_argument("--config", help=CONFIG_HELP)
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config file; exit 0 if it is good.")
    check.add_argument("--config", help=CONFIG_HELP)
    check.add_argument("--json", action="store_true",
                       help='print the verdict as JSON: {"config", "ok", "error" or the nodes}')

    def ctl(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        p.add_argument("--config", help=CONFIG_HELP + ": the nodes' addresses and the token")
        return p

    st = ctl("status", "show the cluster's members, roles, epoch and lag",
             "Show every member: role, state, epoch, applied sequence number and lag "
             "(like patronictl list).")
    st.add_argument("--json", action="store_true", help="print the cluster view as JSON")
    so = ctl("switchover", "hand the primary role to a replica, losing nothing",
             "Graceful switchover: the primary stops accepting writes, waits until the "
             "successor has everything, and hands the lock over. Needs a healthy primary.")
    so.add_argument("--to", help="the successor (default: the best replica)")
    fo = ctl("failover", "make a named node primary when there is no healthy primary",
             "Forced failover, for when no primary is serving and automatic failover will "
             "not (maintenance mode, or no candidate qualifies). Refuses a candidate that "
             "could lack acknowledged writes unless --force.")
    fo.add_argument("--to", required=True, help="the node to promote")
    fo.add_argument("--force", action="store_true",
                    help="promote even a node that may lack acknowledged writes (asks first)")
    fo.add_argument("--yes", action="store_true", help="do not ask before --force")
    ctl("pause", "maintenance mode: no automatic failover",
        "Turn maintenance mode on: nodes keep their roles, nobody takes over automatically.")
    ctl("resume", "leave maintenance mode", "Turn maintenance mode off.")
    hi = ctl("history", "list the epochs: primary, first seq, time, reason",
             "List the cluster's epochs from the Raft state.")
    hi.add_argument("--json", action="store_true", help="print the epochs as JSON")
    ri = ctl("reinit", "wipe one replica and re-bootstrap it from the primary",
             "Remove a replica's database and copy it again from a checkpoint of the "
             "primary; waits until it has caught up, showing the download (bytes, rate, "
             "ETA) and then the catch-up to the primary's seq.")
    ri.add_argument("name", help="the replica to reinitialise")
    ri.add_argument("--no-wait", action="store_true",
                    help="return once the node accepted the reinit; do not wait for it")
    ri.add_argument("--yes", action="store_true", help="do not ask before wiping it")
    bk = ctl("backup", "copy a consistent checkpoint of the primary into a directory",
             "Create a checkpoint on the primary, download and verify every file, check it "
             "opens at the checkpoint's sequence number, and move it to DEST.")
    bk.add_argument("dest", type=Path, help="a new directory for the backup (a RocksDB dir); "
                    "or `now` (a base backup to backup.url) or `list` (what it holds)")
    backup_cli.add_backup_options(bk)
    mem = ctl("member", "add or remove a node (Raft membership change)",
              "Add a node to the Raft membership before starting it for the first time, or "
              "remove one (not the primary) before retiring it. The node's raft address is "
              "taken from the config, which must list it.")
    mem.add_argument("action", choices=["add", "remove"])
    mem.add_argument("name", help="the node to add or remove")
    mem.add_argument("--raft", help="its raft address (host:port), when the config does not "
                                    "list it yet")
    mem.add_argument("--yes", action="store_true", help="do not ask before a remove")
    config_cli.add_parser(ctl, CONFIG_HELP)     # config show | set | reset | edit
    demo = sub.add_parser(
        "demo", help="three local nodes, a steady writer, a SIGKILL of the primary, live",
        description="Start three nodes on loopback in a temporary directory, write a steady "
                    "stream of keys, kill the primary with SIGKILL and show the automatic "
                    "failover as it happens: who was primary, who is now, how long it took, "
                    "how many acknowledged writes were lost. Checks that every node "
                    "converged, cleans up, exits 0.")
    demo.add_argument("--keep", action="store_true",
                      help="leave the cluster running afterwards and print how to try it")
    demo.add_argument("--mode", choices=["sync", "async"], default="sync",
                      help="replication mode (default sync: no acknowledged write is lost)")
    demo.add_argument("--dir", type=Path, help="use this directory (kept) instead of a "
                      "temporary one")
    demo.add_argument("--managed", action="store_true",
                      help="managed mode: each node runs examples/kvservice (from a source "
                           "checkout) under hacluster; writes go through the service")
    credentials.add_parsers(sub)
    backup_cli.add_parsers(sub, CONFIG_HELP)        # restore, bootstrap-from
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.managed:
            from hacluster.tools.demo_managed import run_managed_demo
            return run_managed_demo(args.keep, args.mode, args.dir)
        from hacluster.tools.demo import run_demo
        return run_demo(args.keep, args.mode, args.dir)
    if args.command in credentials.COMMANDS:
        return credentials.run(args)
    args.config, looked = config_path(args.config)
    as_json = args.command == "check-config" and args.json
    if args.config is None:
        print(f"hacluster: no config file: {looked}", file=sys.stderr)
        if as_json:
            print(json.dumps({"config": None, "ok": False, "error": f"no config file: {looked}"}))
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"hacluster: {exc}" + ("" if looked.startswith("--config") else
                                      f" (config from {looked})"), file=sys.stderr)
        if as_json:
            print(json.dumps({"config": args.config, "ok": False, "error": str(exc)}))
        return 2
    if as_json:
        print(json.dumps({"config": args.config, "ok": True, "cluster": cfg.name,
                          "nodes": [n.name for n in cfg.nodes]}, indent=2))
        return 0
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(cfg.nodes)} nodes)")
        return 0
    if args.command == "up":
        from hacluster.tools.local import run_local_cluster
        return run_local_cluster(cfg, args.config, args.log_level)
    if args.command in backup_cli.COMMANDS:
        return backup_cli.run(args, cfg)
    if args.command in CTL_COMMANDS:
        return _ctl(args, cfg)
    try:
        cfg.node(args.node)
    except ConfigError as exc:
        print(f"hacluster: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format, args.node)
    # A core dump would hold the tokens' hashes, the Raft password and the TLS key.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A fatal signal (SIGBUS from a write fault on a full disk, SIGSEGV) leaves a traceback in
    # the log instead of a silent death.
    faulthandler.enable()
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
        node = Node(cfg, args.node, role)
    except TlsError as exc:
        print(f"hacluster: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(node))
    except StoreError as exc:
        log.error("%s", exc)
        return 1


CTL_COMMANDS = frozenset({"status", "switchover", "failover", "pause", "resume", "history",
                          "reinit", "backup", "member", "config"})


def _ctl(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from hacluster.client import Client, client_token
    from hacluster.tools import ctl
    client = Client([n.api.url for n in cfg.nodes], client_token(cfg), failover_timeout=5.0,
                    ca_file=cfg.tls.ca_file)
    if args.command == "status":
        return ctl.status(client, cfg, args.json)
    if args.command == "history":
        return ctl.history(client, args.json)
    if args.command == "config":
        return config_cli.run(client, args, confirm)
    if args.command == "switchover":
        return ctl.switchover(client, args.to)
    if args.command == "failover":
        if args.force and (refused := confirm(
                f"force {args.to} to primary even if it lacks acknowledged writes?",
                args.yes)) is not None:
            return refused
        return ctl.failover(client, args.to, args.force)
    if args.command in ("pause", "resume"):
        return ctl.pause(client, args.command == "pause")
    if args.command == "member":
        if args.raft is None:
            try:
                cfg.node(args.name)
            except ConfigError as exc:
                print(f"hacluster: {exc} (or give --raft HOST:PORT)", file=sys.stderr)
                return 2
        if args.action == "remove" and (refused := confirm(
                f"remove {args.name} from the Raft membership?", args.yes)) is not None:
            return refused
        return ctl.member(client, cfg, args.action, args.name, args.raft)
    if args.command == "reinit":
        try:
            cfg.node(args.name)
        except ConfigError as exc:
            print(f"hacluster: {exc}", file=sys.stderr)
            return 2
        if (refused := confirm(f"wipe {args.name}'s database and copy it again from the "
                               "primary?", args.yes)) is not None:
            return refused
        return ctl.reinit(client, cfg, args.name, wait_for_it=not args.no_wait)
    # Warnings only: the download's progress is ctl's bar, not the bootstrap's log lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if str(args.dest) in backup_cli.ACTIONS:
        return backup_cli.backup_action(args, cfg, client)
    return ctl.backup(client, cfg, args.dest)


async def _run(node: Node) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except ManagedDbError as exc:
        # Refused before anything started: the service's database, its options or its lock.
        log.error("cannot start %s: %s", node.name, exc)
        return 2
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
