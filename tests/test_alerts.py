"""The Grafana dashboard (deploy/grafana/hacluster.json) and the Prometheus alert rules
(deploy/prometheus/alerts.yml): importable, complete, and built only on metrics a live node
exposes.

Every PromQL expression of both files is reduced to the metric names it reads, and each name
is looked up in the ``/metrics`` of a real three-node cluster (with TLS, so that the
certificate gauge exists). ``promtool check rules`` and ``promtool test rules`` run too when
promtool is installed (Debian: ``apt-get install prometheus``; .ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hacluster.security import certs
from hacluster.testing.harness import Cluster

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "hacluster.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

# Names no node without a backup configured exposes: they come from the backup subsystem
# (hacluster/backup, present on the primary once backup.url is set). Exactly these may be
# missing from the live cluster's /metrics below.
BACKUP_METRICS = frozenset({"hacluster_backup_archive_lag_seconds"})
# Made by Prometheus itself for every target, never exposed by one.
PROMETHEUS_METRICS = frozenset({"up"})

KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                      "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                "$cluster": ".*", "$instance": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) reads."""
    found = re.fullmatch(r"\s*label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*,)?"
                         r"\s*\w+\s*\)\s*", expr)
    if found:
        return {found.group(1)} if found.group(1) else set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)    # strings
    text = re.sub(r"\{[^}]*\}", " ", text)                                   # matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                                  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_are_extracted_from_promql() -> None:
    assert metric_names('sum by (le) (rate(a_bucket{route=~"/v1/kv/.*", x="y"}[5m]))') == \
        {"a_bucket"}
    assert metric_names('x{role="primary"} * ignoring (role) y < 1') == {"x", "y"}
    assert metric_names("max by (cluster, replica) (z) > 30 and on (i) w") == {"z", "w"}
    assert metric_names("m < 14 * 86400") == {"m"}
    assert metric_names("m != m") == {"m"}
    assert metric_names("changes(max by (c) (e{a=~\"$c\"})[2m:15s]) > 0") == {"e"}
    assert metric_names("label_values(b_info{cluster=~\"$cluster\"}, instance)") == {"b_info"}
    assert metric_names("label_values(cluster)") == set()


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_dashboard_is_importable_and_covers_what_on_call_needs() -> None:
    doc = dashboard()
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    assert doc["uid"] and doc["title"]
    (inp,) = doc["__inputs"]
    assert (inp["name"], inp["type"], inp["pluginId"]) == ("DS_PROMETHEUS", "datasource",
                                                           "prometheus")
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"cluster", "instance"} <= set(variables)
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            # Every query follows the cluster and node pickers.
            assert '"$cluster"' in target["expr"] and '"$instance"' in target["expr"], \
                (panel["title"], target["expr"])
    used = set().union(*(metric_names(e) for e in dashboard_exprs(doc)))
    for name in ("hacluster_role", "hacluster_epoch", "hacluster_writes_total",
                 "hacluster_http_request_duration_seconds_bucket",
                 "hacluster_replication_lag_seqs", "hacluster_replication_lag_seconds",
                 "hacluster_failovers_total", "hacluster_backup_archive_lag_seconds",
                 "hacluster_disk_free_bytes", "hacluster_disk_total_bytes",
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in used, f"the dashboard shows nothing from {name}"


def test_the_alert_rules_cover_the_failures_on_call_must_hear_about() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    wanted = {"HaclusterNoPrimary": "hacluster_writable",
              "HaclusterReplicationLagHigh": "hacluster_replication_lag_seconds",
              "HaclusterArchiveLagHigh": "hacluster_backup_archive_lag_seconds",
              "HaclusterDiskLow": "hacluster_disk_low",
              "HaclusterDivergentWrites": "hacluster_divergent_ops",
              "HaclusterCertificateExpiring": "hacluster_tls_cert_expiry_seconds",
              "HaclusterNodeDown": "up"}
    for alert, metric in wanted.items():
        assert alert in names, alert
        (rule,) = [r for r in rules if r["alert"] == alert]
        assert metric in metric_names(rule["expr"]), (alert, rule["expr"])


# -- against a live cluster ------------------------------------------------------------------

@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name the nodes of a live TLS cluster expose: sample names, and for a
    declared family with no sample yet (a labelled counter nothing counted) the names its
    samples will have."""
    root = tmp_path_factory.mktemp("alerts")
    pki = root / "pki"
    certs.init_ca(pki, cluster="test")
    for name in ("n1", "n2", "n3"):
        certs.issue(pki, name, hosts=["127.0.0.1", "localhost"])
    tls = {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
           "ca_file": str(pki / "ca.crt")}
    cluster = Cluster(root / "c", consensus=True, tls=tls)
    try:
        cluster.start()
        p = cluster.wait_primary()
        assert p.put("k", b"v").status == 200
        cluster.wait_converged()
        names: set[str] = set()
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "summary": ("_count", "_sum"), "info": ("_info",)}
        for node in cluster.nodes.values():
            text = node.get("/metrics").body.decode()
            for family in text_string_to_metric_families(text):
                names.update(s.name for s in family.samples)
                names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        return names
    finally:
        cluster.stop()


def check_names(exprs: list[str], exposed: set[str], where: str) -> None:
    unknown = {}
    for expr in exprs:
        missing = metric_names(expr) - exposed - BACKUP_METRICS - PROMETHEUS_METRICS
        if missing:
            unknown[expr] = sorted(missing)
    assert not unknown, f"{where}: metrics no node exposes: {unknown}"


def test_every_alert_reads_metrics_a_live_node_exposes(exposed: set[str]) -> None:
    assert "hacluster_tls_cert_expiry_seconds" in exposed        # the cluster runs TLS
    assert "hacluster_backup_archive_lag_seconds" not in exposed  # else drop the allowance
    check_names([r["expr"] for r in alert_rules()], exposed, str(ALERTS))


def test_every_dashboard_query_reads_metrics_a_live_node_exposes(exposed: set[str]) -> None:
    check_names(dashboard_exprs(dashboard()), exposed, str(DASHBOARD))


def test_a_made_up_name_is_caught(exposed: set[str]) -> None:
    with pytest.raises(AssertionError, match="hacluster_replica_lag"):
        check_names(["max(hacluster_replica_lag) > 5"], exposed, "test")


# -- promtool --------------------------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian: apt-get install prometheus)")


def promtool(*args: str, cwd: Path | None = None) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool("check", "rules", str(ALERTS))
    promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """The dashboard's queries, Grafana's variables filled in, as recording rules: promtool
    parses each one."""
    exprs = [e for e in dashboard_exprs(dashboard()) if not e.startswith("label_values")]
    for var, value in GRAFANA_VARS.items():
        exprs = [e.replace(var, value) for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path))
