"""``hacluster certs`` and ``hacluster token``: making the credentials a cluster runs with.

Owns the two command groups: ``certs init`` (a small CA for operators without a PKI),
``certs issue NODE --host H`` (a node's certificate and key), ``certs show FILE``, and ``token
new --role ROLE [--name WHO]`` (prints the token once, and the ``auth.tokens`` entry that
accepts it — the config only ever holds its hash). It must never print a private key, and
never store a token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hacluster.security import certs
from hacluster.security.tokens import Role, new_token

COMMANDS = frozenset({"certs", "token"})


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("certs", help="make a cluster CA and node certificates (no PKI needed)",
                       description="A small CA and node certificates for a cluster whose "
                                   "operators have no PKI. Real deployments should prefer "
                                   "their own CA (docs/security.md).")
    cs = c.add_subparsers(dest="certs_command", required=True)
    init = cs.add_parser("init", help="create ca.crt and ca.key in DIR")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--cluster", default="hacluster", help="the name in the CA's subject")
    init.add_argument("--days", type=int, default=3650)
    issue = cs.add_parser("issue", help="create NAME.crt and NAME.key signed by DIR's CA")
    issue.add_argument("name", help="the node's name (its certificate's common name)")
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("--host", action="append", default=[],
                       help="a DNS name or IP address the node is reached at (repeat)")
    issue.add_argument("--days", type=int, default=825)
    issue.add_argument("--client-only", action="store_true",
                       help="a client certificate (for an operator's backups)")
    show = cs.add_parser("show", help="print a certificate's names and validity")
    show.add_argument("file", type=Path)
    show.add_argument("--json", action="store_true", help="print them as a JSON document")
    t = sub.add_parser("token", help="make a role token",
                       description="Print a new token (once) and the auth.tokens entry that "
                                   "accepts it.")
    ts = t.add_subparsers(dest="token_command", required=True)
    new = ts.add_parser("new", help="a new token of one role")
    new.add_argument("--role", required=True, choices=[r.value for r in Role])
    new.add_argument("--name", default="", help="who holds it, for the audit log")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "token":
            token, entry = new_token(Role(args.role), args.name)
            print(token)          # stdout: the token alone, for a script to capture
            print("# the token above is shown once: give it to its holder (HACLUSTER_TOKEN)",
                  file=sys.stderr)
            fields = {"id": entry.id, "role": entry.role.value, "sha256": entry.sha256}
            if entry.name:
                fields["name"] = entry.name
            print("# add to auth.tokens in the cluster config:", file=sys.stderr)
            print("- " + json.dumps(fields), file=sys.stderr)
            return 0
        if args.certs_command == "init":
            crt, key = certs.init_ca(args.dir, cluster=args.cluster, days=args.days)
            print(f"CA certificate {crt} (give it to every node and client as tls.ca_file); "
                  f"its key {key} signs certificates: keep it offline")
        elif args.certs_command == "issue":
            crt, key = certs.issue(args.dir, args.name, hosts=args.host, days=args.days,
                                   client_only=args.client_only)
            print(f"{crt} and {key}: tls.cert_file and tls.key_file of {args.name}")
        else:
            doc = certs.describe(args.file)
            if args.json:
                print(json.dumps(doc, indent=1, default=str))
            else:
                width = max(len(k) for k in doc)
                for name, value in doc.items():
                    text = ", ".join(map(str, value)) if isinstance(value, list) else value
                    print(f"{name:<{width}}  {text}")
        return 0
    except certs.CertError as exc:
        print(f"hacluster: {exc}", file=sys.stderr)
        return 2
