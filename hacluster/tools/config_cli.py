"""``hacluster config show | set | reset | edit``: the dynamic configuration from the shell.

Owns the commands' arguments, the editable YAML form (one line per dynamic key, its value in
effect, a comment saying whether the file or the dynamic configuration gives it) and turning
an edit into changes: a changed value becomes an override, a deleted line goes back to the
file's value. Every change is sent with the version it was read at, so two operators editing
at once cannot overwrite each other (the second is told to read again). It must never send a
key it has not checked is dynamic, nor apply an edit the operator did not confirm.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hacluster.client.errors import HaclusterError, OutcomeUnknown
from hacluster.config import ConfigError
from hacluster.config.dynamic import DYNAMIC_KEYS, check_key, parse_value
from hacluster.tools.ctl import table

if TYPE_CHECKING:
    from hacluster.client import Client

Confirm = Callable[[str, bool], "int | None"]

# How long a change whose answer was lost is watched for: longer than a node waits for its
# Raft proposal to commit (5 s), after which the proposal is either in or refused.
SETTLE_S = 6.0


def add_parser(ctl: Callable[[str, str, str], argparse.ArgumentParser],
               config_help: str) -> None:
    cf = ctl("config", "show or change the dynamic configuration (kept in Raft)",
             "The settings every node must agree on (replication mode, sync_replicas, lease "
             "timings, failover lag, backup schedule) live in Raft: changed here, validated "
             "like the file, applied by every node without a restart, recorded in /history. "
             "Per-node settings stay in the file.")
    verbs = cf.add_subparsers(dest="verb", required=True)
    show = verbs.add_parser("show", help="every dynamic key: value in effect and its source")
    show.add_argument("--json", action="store_true", help="print the configuration as JSON")
    st = verbs.add_parser("set", help="set dynamic keys: KEY VALUE [KEY VALUE ...]")
    st.add_argument("pairs", nargs="+", metavar="KEY VALUE")
    rs = verbs.add_parser("reset", help="go back to the file's value for KEY ...")
    rs.add_argument("keys", nargs="+", metavar="KEY")
    ed = verbs.add_parser("edit", help="edit the dynamic keys in $EDITOR, then apply the diff")
    ed.add_argument("--yes", action="store_true", help="apply without asking")
    for verb in (show, st, rs, ed):
        # Also after the verb (`hacluster config set K V --config F`); SUPPRESS keeps the
        # one given before it when this one is absent.
        verb.add_argument("--config", default=argparse.SUPPRESS, help=config_help)


def run(client: Client, args: argparse.Namespace, confirm: Confirm) -> int:
    try:
        if args.verb == "show":
            return show(client, args.json)
        if args.verb == "set":
            if len(args.pairs) % 2:
                return _fail(f"set takes KEY VALUE pairs; {args.pairs[-1]!r} has no value")
            pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
            return change(client, {k: parse_value(k, v) for k, v in pairs}, None)
        if args.verb == "reset":
            return change(client, {check_key(k): None for k in args.keys}, None)
        return edit(client, args.yes, confirm)
    except ConfigError as exc:
        return _fail(str(exc))
    except HaclusterError as exc:
        return _fail(str(exc))


def _fail(message: str) -> int:
    print(f"hacluster: {message}", file=sys.stderr)
    return 1


def _source(doc: dict[str, Any], key: str) -> str:
    if key in doc["overrides"]:
        return f"dynamic (version {doc['version']})"
    return "file"


def show(client: Client, as_json: bool) -> int:
    doc = client.cluster_config()
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    rows = [(key, _text(doc["values"].get(key)), _source(doc, key), meaning)
            for key, meaning in DYNAMIC_KEYS.items() if key in doc["values"]]
    print(f"dynamic configuration version {doc['version']}" +
          (f" (this node has {doc['in_effect']} in effect)" if doc["in_effect"] !=
           doc["version"] else ""))
    print(table(["Key", "Value", "From", "Meaning"], rows))
    if doc.get("error"):
        print(f"warning: {doc['error']}", file=sys.stderr)
    return 0


def _text(value: Any) -> str:
    return "" if value is None else json.dumps(value) if isinstance(value, str) else str(value)


def change(client: Client, changes: dict[str, Any], expected: int | None) -> int:
    described = ", ".join(f"{k}={'(file value)' if v is None else v}" for k, v in
                          changes.items())
    before = expected
    if before is None:
        before = client.cluster_config()["version"]
    try:
        doc = client.change_cluster_config(changes, expected)
    except OutcomeUnknown as exc:
        # Sent, no answer: never sent again (a repeat could apply twice, or be refused as
        # "changed meanwhile" although it was ours). The configuration itself says.
        return _judge_lost_answer(client, changes, before, described, exc)
    print(f"dynamic configuration version {doc['changed_to_version']}: {described}")
    return 0


def _judge_lost_answer(client: Client, changes: dict[str, Any], before: int,
                       described: str, lost: OutcomeUnknown) -> int:
    """After a change sent without an answer: read the configuration back and say whether
    it took effect (0: one version later, with the values asked for), did not (1: the same
    version, safe to run again) or cannot be told (1: more versions, or other values)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            after = client.cluster_config()
        except HaclusterError as exc:
            return _fail(f"config change outcome unknown ({lost}); reading the configuration "
                         f"back failed too: {exc}; see hacluster config show before asking "
                         "again")
        if after["version"] != before or time.monotonic() >= deadline:
            break
        time.sleep(0.2)     # the proposal may still be committing
    if after["version"] == before:
        return _fail(f"config change not applied: the answer was lost ({lost}) and the "
                     f"configuration is still version {before} after {SETTLE_S:g} s; it is "
                     "safe to run it again")
    overrides = after["overrides"]
    ours = all((key not in overrides) if value is None else overrides.get(key) == value
               for key, value in changes.items())
    if ours and after["version"] == before + 1:
        print(f"dynamic configuration version {after['version']}: {described} (the answer "
              "was lost; read back: applied, these values are in effect)")
        return 0
    return _fail(f"config change outcome unknown: the answer was lost ({lost}) and the "
                 f"configuration moved from version {before} to {after['version']}"
                 f"{'' if ours else ' with other values'}; see hacluster config show before "
                 "asking again")


def editable(doc: dict[str, Any]) -> str:
    """The YAML an operator edits: one line per dynamic key, with where its value is from."""
    lines = [f"# hacluster dynamic configuration, version {doc['version']}.",
             "# Change a value to set it for the whole cluster; delete a line to go back to",
             "# the value in each node's file. Other keys are file-only (restart to change)."]
    for key in DYNAMIC_KEYS:
        if key not in doc["values"]:
            continue
        value = doc["values"][key]
        note = (f"dynamic; the file says {_text(doc['file'].get(key))}"
                if key in doc["overrides"] else "from the file")
        lines.append(f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip()}"
                     .removesuffix("\n...") + f"    # {note}")
    return "\n".join(lines) + "\n"


def diff(doc: dict[str, Any], text: str) -> dict[str, Any]:
    """The changes an edited text asks for; ConfigError naming a bad key or value."""
    try:
        edited = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"the edited configuration is not valid YAML: {exc}") from None
    if not isinstance(edited, dict):
        raise ConfigError("the edited configuration must be KEY: VALUE lines")
    changes: dict[str, Any] = {}
    for key, value in edited.items():
        check_key(key)
        if value != doc["values"].get(key):
            changes[key] = value
    for key in doc["overrides"]:
        if key not in edited:
            changes[key] = None          # deleted: the file's value again
    return changes


def edit(client: Client, yes: bool, confirm: Confirm) -> int:
    doc = client.cluster_config()
    with tempfile.TemporaryDirectory(prefix="hacluster-config-") as tmp:
        path = Path(tmp) / "dynamic.yaml"
        path.write_text(editable(doc))
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        if subprocess.run([*shlex.split(editor), str(path)], check=False).returncode != 0:
            return _fail(f"the editor ({editor}) failed; nothing changed")
        changes = diff(doc, path.read_text())
    if not changes:
        print("no change")
        return 0
    for key, value in changes.items():
        old = _text(doc["values"].get(key))
        new = f"the file's value ({_text(doc['file'].get(key))})" if value is None else \
            _text(value)
        print(f"  {key}: {old} -> {new}")
    if (refused := confirm("apply these changes to the whole cluster?", yes)) is not None:
        return refused
    return change(client, changes, doc["version"])
