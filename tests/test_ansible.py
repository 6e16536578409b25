"""The Ansible deployment (``deploy/ansible/``), linted and driven for real.

``ansible-lint`` (production profile) must pass on the project and ``ansible-playbook
--syntax-check`` on every playbook (the ``*.yml`` files at the top of ``deploy/ansible/``). The
systemd unit the role renders must pass ``systemd-analyze verify``, and the config it renders
must load with ``load_config``, in standalone and in managed mode (``hacluster_application``,
docs/managed.md: its ``application`` section, key for key, and the unit's ``KillMode=mixed``).
Then ``site.yml`` converges a real three-node cluster on this machine: three inventory hosts
with ``ansible_connection: local``, each with its own ports, directories and virtual
environment, in the role's ``process`` service mode (systemd is not PID 1 here), installing a
wheel built from this checkout, with TLS as the role sets it up by default (a cluster CA and
node certificates it makes on the controller; every client here speaks https and verifies them
against that CA) but without mutual TLS, so that the nodes' replication token is deployed and
rotated too, and role tokens (admin, write, replication). The nodes must elect a primary that
``GET /leader`` names on every node; a second run must report no change; and
``rolling-upgrade.yml``, run while a client writes through the nodes' API, must restart every
node on a new wheel (replicas first, then a switchover, then the former primary). With the
client still writing, ``add-node.yml`` then adds a fourth host without restarting the others,
and ``remove-node.yml`` removes the primary (a switchover first) without restarting the others,
leaving three Raft members. Then ``rotate-secrets.yml``, still under the writer, rotates the
admin and replication tokens (the old ones retired), every node certificate and the Raft
password; ``site.yml`` with the new password moved into place changes nothing. No request of
the writer may be refused for its credentials, no acknowledged write may be lost and no
automatic failover may happen (the epoch history holds only the bootstrap and switchovers), and
every node must end with the primary's data.

Skips, saying why, where ansible-playbook (or ansible-lint) is not installed (``pip install -e
'.[test]'`` installs both), and the cluster test where it cannot run as root.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from hacluster.config import load_config
from hacluster.security.tokens import Role, TokenEntry, new_token
from hacluster.testing.harness import TLS_PORTS, free_ports, read_db, request, wait_for
from hacluster.testing.history import Endpoint, Writer, check_all

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
PLAYBOOKS = sorted(p.name for p in ANSIBLE_DIR.glob("*.yml"))
RAFT_PASSWORD = "ansible-test-raft-password-0123456789"
NEXT_RAFT_PASSWORD = "ansible-test-raft-password-next-0123456789"
# Role tokens: the inventory holds their entries (hashes) and the admin and replication tokens;
# the writer uses the write token. rotate-secrets.yml replaces the admin and replication ones.
ADMIN_TOKEN, ADMIN_ENTRY = new_token(Role.ADMIN, "ops")
WRITE_TOKEN, WRITE_ENTRY = new_token(Role.WRITE, "writer")
REPLICATION_TOKEN, REPLICATION_ENTRY = new_token(Role.REPLICATION, "nodes")
NEW_ADMIN_TOKEN, NEW_ADMIN_ENTRY = new_token(Role.ADMIN, "ops2")
NEW_REPLICATION_TOKEN, NEW_REPLICATION_ENTRY = new_token(Role.REPLICATION, "nodes2")
NAMES = ("n1", "n2", "n3")


def tool(name: str) -> str | None:
    """An executable next to this interpreter (its virtual environment), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


ANSIBLE_PLAYBOOK = tool("ansible-playbook")
ANSIBLE_LINT = tool("ansible-lint")

pytestmark = pytest.mark.skipif(
    ANSIBLE_PLAYBOOK is None,
    reason="ansible-playbook is not installed (ansible-core; pip install -e '.[test]')")


# tests/ansible_speedup/sitecustomize.py: module runs reuse compiled module_utils (Python
# 3.11 compiles what it imports from a zip on every run; a third of each task's CPU).
SPEEDUP_DIR = Path(__file__).resolve().parent / "ansible_speedup"
ZIPCODE_CACHE = Path(tempfile.gettempdir()) / f"hacluster-test-ansiballz-{os.getuid()}"


def ansible_env(tmp: Path) -> dict[str, str]:
    ZIPCODE_CACHE.mkdir(mode=0o700, exist_ok=True)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{SPEEDUP_DIR}{os.pathsep}{path}" if path else str(SPEEDUP_DIR),
            "HACLUSTER_TEST_ZIPCODE_CACHE": str(ZIPCODE_CACHE),
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def run_playbook(tmp: Path, playbook: str, inventory: Path, log_name: str,
                 *extra: str, timeout: float = 900, rc: int = 0) -> str:
    """Run a playbook of deploy/ansible; return its output, failing with its end unless it
    exits with ``rc``."""
    assert ANSIBLE_PLAYBOOK is not None
    log = tmp / log_name
    started = time.monotonic()
    # The log_path copy has a timestamp on every line: where a slow run spent its time.
    env = ansible_env(tmp) | {"ANSIBLE_LOG_PATH": str(log.with_suffix(".timed.log"))}
    with open(log, "wb") as out:
        proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), playbook, *extra],
                              cwd=ANSIBLE_DIR, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    text = log.read_text(errors="replace")
    print(f"{log_name}: {playbook} took {time.monotonic() - started:.1f} s")
    assert proc.returncode == rc, (f"ansible-playbook {playbook} exited {proc.returncode} "
                                  f"(full output: {log}):\n{failure_summary(tmp, text)}"
                                  f"\n--- the output's end ---\n{text[-3000:]}")
    return text


def failure_summary(tmp: Path, text: str) -> str:
    """What failed, first: each failed task with its message, then the end of every node's
    log (CI shows only the start of a long assertion message)."""
    lines = text.splitlines()
    parts: list[str] = []
    task = ""
    for line in lines:
        if line.startswith("TASK ["):
            task = line.rstrip("* ")
        elif line.startswith(("fatal:", "failed:")) or "FAILED!" in line:
            parts.append(f"{task}\n  {line[:1500]}")
    for node_log in sorted(tmp.glob("hosts/*/log/*.log")):
        tail = node_log.read_text(errors="replace").splitlines()[-12:]
        parts.append(f"--- {node_log.relative_to(tmp)} ---\n" + "\n".join(t[:300] for t in tail))
    return "\n".join(parts)


def entry(e: TokenEntry) -> dict[str, str]:
    """An hacluster_tokens item, as `hacluster token new` prints it."""
    return {"id": e.id, "role": e.role.value, "sha256": e.sha256, "name": e.name}


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: {host: {"ok": …, "changed": …, "failed": …, …}}."""
    rows = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        rows[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return rows


# --- static checks ----------------------------------------------------------------------------


@pytest.mark.skipif(ANSIBLE_LINT is None, reason="ansible-lint is not installed "
                    "(pip install -e '.[test]')")
def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    assert ANSIBLE_LINT is not None
    # --project-dir keeps ansible-lint's cache in deploy/ansible/.ansible (git-ignored).
    proc = subprocess.run([ANSIBLE_LINT, "--profile", "production", "--project-dir", ".",
                           "--nocolor", "."], cwd=ANSIBLE_DIR,
                          env={**ansible_env(tmp_path), "ANSIBLE_LINT_SKIP_SCHEMA_UPDATE": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_there_are_the_playbooks_the_readme_names() -> None:
    assert {"site.yml", "rolling-upgrade.yml", "add-node.yml", "remove-node.yml"} <= set(PLAYBOOKS)
    readme = (ANSIBLE_DIR / "README.md").read_text()
    for playbook in PLAYBOOKS:
        assert playbook in readme, f"deploy/ansible/README.md does not mention {playbook}"


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_check_passes(playbook: str, tmp_path: Path) -> None:
    assert ANSIBLE_PLAYBOOK is not None
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "--syntax-check", playbook], cwd=ANSIBLE_DIR,
                          env=ansible_env(tmp_path), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_variable_is_documented() -> None:
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles/hacluster/defaults/main.yml").read_text())
    specs = yaml.safe_load((ANSIBLE_DIR / "roles/hacluster/meta/argument_specs.yml")
                           .read_text())["argument_specs"]["main"]["options"]
    readme = (ANSIBLE_DIR / "README.md").read_text()
    names = set(defaults) | set(specs)
    assert set(defaults) <= set(specs), f"no argument spec: {sorted(set(defaults) - set(specs))}"
    # The secrets have no defaults (from the vault).
    assert names - set(defaults) == {
        "hacluster_token", "hacluster_raft_password", "hacluster_admin_token",
        "hacluster_replication_token", "hacluster_raft_password_also_accepted",
        "hacluster_raft_password_next"}
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"deploy/ansible/README.md does not describe {missing}"


# Managed mode (docs/managed.md): every key of the application section but health_command,
# which excludes health_url; the commands as a list and as a string.
APPLICATION: dict[str, Any] = {
    "db_path": "/var/lib/myservice/{node}/db",
    "primary_command": ["/usr/bin/myservice", "--config", "/etc/myservice.yaml"],
    "replica_command": "/usr/bin/myservice --read-only --node {node}",
    "stop_signal": "SIGINT",
    "stop_timeout_s": 12.5,
    "start_timeout_s": 45,
    "health_url": "http://127.0.0.1:8008/health",
    "health_interval_s": 0.5,
    "env": {"MYSERVICE_LOG": "info", "MYSERVICE_THREADS": 4},
    "cwd": "/var/lib/myservice",
    "log_file": "/var/log/hacluster/{node}-service.log",
    "max_restarts": 5,
    "restart_window_s": 120,
    "poll_interval_ms": 2,
}


def local_inventory(tmp: Path) -> Path:
    """Two nodes on this machine (ansible_connection: local), for rendering the role's files."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hacluster": {"hosts": {
        "n1": {**host, "hacluster_api_address": "127.0.0.1:8701",
               "hacluster_raft_address": "127.0.0.1:8801"},
        "n2": {**host, "hacluster_api_address": "127.0.0.1:8702",
               "hacluster_raft_address": "127.0.0.1:8802"}}}}}}))
    return inventory


def render_config(tmp: Path, variables: dict[str, Any], rc: int = 0) -> tuple[Path, str]:
    """Check ``variables`` as the role does (its argument spec, validate.yml), then render
    cluster.yaml (and the process-mode launcher, next to it) with them through the role's
    templates; return the config file and the output."""
    role = ANSIBLE_DIR / "roles" / "hacluster"
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    variables = {"hacluster_raft_password": RAFT_PASSWORD, "hacluster_admin_token": ADMIN_TOKEN,
                 "hacluster_tokens": [entry(ADMIN_ENTRY)], **variables}
    extra = tmp / "extra.json"
    extra.write_text(json.dumps(variables))
    config = tmp / "cluster.yaml"
    playbook = tmp / "config.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the config", "hosts": "n1", "gather_facts": False,
        "tasks": [
            {"name": "Check the variables against the role's argument spec",
             "ansible.builtin.validate_argument_spec": {
                 "argument_spec": {k: options[k] for k in variables},
                 "provided_arguments": {k: f"{{{{ {k} }}}}" for k in variables}}},
            {"name": "Describe the cluster", "ansible.builtin.include_role": {
                "name": "hacluster", "tasks_from": "facts.yml", "public": True}},
            {"name": "Check the settings", "ansible.builtin.include_role": {
                "name": "hacluster", "tasks_from": "validate.yml"}},
            {"name": "Write the config", "ansible.builtin.template": {
                "src": str(role / "templates" / "cluster.yaml.j2"), "dest": str(config),
                "mode": "0600"}},
            {"name": "Write the process-mode launcher", "ansible.builtin.template": {
                "src": str(role / "templates" / "hacluster-service.j2"),
                "dest": str(tmp / "hacluster-service"), "mode": "0600"}}]}]))
    output = run_playbook(tmp, str(playbook), local_inventory(tmp), "config.log", "-e",
                          f"@{extra}", rc=rc)
    return config, output


@pytest.mark.parametrize("managed", [False, True], ids=["standalone", "managed"])
def test_the_config_the_role_renders_loads(managed: bool, tmp_path: Path) -> None:
    """hacluster_application becomes the application section, key for key, and hacluster
    loads it; without it the config has none (standalone mode)."""
    config, _ = render_config(tmp_path, {"hacluster_application": APPLICATION} if managed else {})
    doc = yaml.safe_load(config.read_text())
    cfg = load_config(config, env={"HACLUSTER_RAFT_PASSWORD": RAFT_PASSWORD})
    # The process-mode launcher waits for the service's stop too before its SIGKILL.
    launcher = (tmp_path / "hacluster-service").read_text()
    compile(launcher, "hacluster-service", "exec")
    assert f"\nSTOP_TIMEOUT = {43 if managed else 30}\n" in launcher
    if not managed:
        assert "application" not in doc
        assert cfg.application is None
        return
    assert doc["application"] == APPLICATION
    app = cfg.application
    assert app is not None
    assert app.db_path_for("n1") == Path("/var/lib/myservice/n1/db")
    assert app.command_for("primary", "n1") == ("/usr/bin/myservice", "--config",
                                                "/etc/myservice.yaml")
    assert app.command_for("replica", "n2") == ("/usr/bin/myservice", "--read-only",
                                                "--node", "n2")
    assert (app.stop_signal, app.stop_timeout_s, app.start_timeout_s) == ("SIGINT", 12.5, 45)
    assert (app.health_url, app.health_command, app.health_interval_s) == (
        "http://127.0.0.1:8008/health", None, 0.5)
    assert dict(app.env) == {"MYSERVICE_LOG": "info", "MYSERVICE_THREADS": "4"}
    assert app.cwd == Path("/var/lib/myservice")
    assert app.log_file_for("n2") == Path("/var/log/hacluster/n2-service.log")
    assert (app.max_restarts, app.restart_window_s, app.poll_interval_ms) == (5, 120, 2)


def test_an_application_without_its_required_keys_is_refused(tmp_path: Path) -> None:
    _, output = render_config(tmp_path, {"hacluster_application": {
        "db_path": "var/lib/myservice/db", "health_url": "http://127.0.0.1:8008/health"}}, rc=2)
    assert "Check the managed mode settings" in output
    assert "needs db_path" in output
    assert not (tmp_path / "cluster.yaml").exists()


def test_the_application_options_are_the_documented_keys() -> None:
    """The argument spec of hacluster_application names exactly the keys
    docs/configuration.md lists for the application section."""
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("\n## `application`\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    specs = yaml.safe_load((ANSIBLE_DIR / "roles/hacluster/meta/argument_specs.yml")
                           .read_text())["argument_specs"]["main"]["options"]
    options = specs["hacluster_application"]["options"]
    assert set(options) == documented
    for name, option in options.items():
        assert set(option) == {"type", "description"}, f"{name}: {option}"
    assert set(APPLICATION) == documented - {"health_command"}


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(("watchdog", "managed"),
                         [("off", False), ("required", False), ("off", True)],
                         ids=["plain", "watchdog", "managed"])
def test_the_systemd_unit_verifies(watchdog: str, managed: bool, tmp_path: Path) -> None:
    """Render the unit through the role and let systemd check it (no systemd needed)."""
    assert SYSTEMD_ANALYZE is not None
    venv = Path(sys.executable).parent.parent    # any venv with bin/hacluster for ExecStart=
    if not (venv / "bin" / "hacluster").exists():
        pytest.skip(f"{venv}/bin/hacluster does not exist (pip install -e .)")
    inventory = local_inventory(tmp_path)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"hacluster_application": APPLICATION} if managed else {}))
    playbook = tmp_path / "unit.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the unit", "hosts": "n1", "gather_facts": False,
        "vars": {"hacluster_restart_on_change": False},
        "tasks": [{"name": "Describe the cluster", "ansible.builtin.include_role": {
                       "name": "hacluster", "tasks_from": "facts.yml"}},
                  {"name": "Write the unit", "ansible.builtin.include_role": {
                       "name": "hacluster", "tasks_from": "unit.yml"}}]}]))
    run_playbook(tmp_path, str(playbook), inventory, "unit.log",
                 "-e", f"hacluster_systemd_unit_dir={tmp_path}", "-e", f"hacluster_venv_dir={venv}",
                 "-e", f"hacluster_install_dir={tmp_path / 'opt'}",
                 "-e", f"hacluster_watchdog_mode={watchdog}", "-e", f"@{extra}")
    unit = tmp_path / "hacluster.service"
    text = unit.read_text()
    for line in ("Type=notify\n", "NotifyAccess=main\n", "User=hacluster",
                 "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/hacluster",
                 "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
                 "EnvironmentFile=/etc/hacluster/hacluster.env"):
        assert line in text, f"{line!r} not in the unit:\n{text}"
    assert "ExecStartPost=" not in text      # readiness comes from sd_notify READY=1
    assert ("DeviceAllow=/dev/watchdog rw" in text) == (watchdog != "off")
    assert ("PrivateDevices=yes" in text) == (watchdog == "off")
    # Managed mode: SIGTERM to the node alone, which stops its service first, and the time
    # for both; the service writes its database's directory and its log file's.
    assert ("KillMode=mixed\n" in text) == managed
    stop_timeout = 30 + (math.ceil(APPLICATION["stop_timeout_s"]) if managed else 0)
    assert f"TimeoutStopSec={stop_timeout}\n" in text
    rw_paths = ("ReadWritePaths=/var/lib/hacluster /var/lib/myservice/n1 /var/log/hacluster\n"
                if managed else "ReadWritePaths=/var/lib/hacluster\n")
    assert rw_paths in text
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr


# --- a real cluster ---------------------------------------------------------------------------


def service_python() -> str | None:
    """A system Python >= 3.11 with venv that a dedicated service user can run."""
    for candidate in ("/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/python3.12",
                      "/usr/bin/python3.13"):
        if not Path(candidate).exists():
            continue
        check = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; "
                                "assert sys.version_info >= (3, 11)"],
                               capture_output=True, check=False)
        if check.returncode == 0:
            return candidate
    return None


def build_wheels(tmp: Path) -> tuple[Path, Path, Path, str]:
    """Wheels of this checkout: (wheelhouse with every dependency, the wheel, an upgrade
    wheel with a higher local version, that version). Built from a copy of the sources, so
    nothing is written into the checkout."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "hacluster", src / "hacluster",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    upgrade_src = tmp / "src-upgrade"
    shutil.copytree(src, upgrade_src)
    pyproject = upgrade_src / "pyproject.toml"
    text = pyproject.read_text()
    version = re.search(r'^version = "([^"]+)"$', text, re.M)
    assert version, "no version in pyproject.toml"
    new = version.group(1) + (".upgrade1" if "+" in version.group(1) else "+upgrade1")
    pyproject.write_text(text.replace(version.group(0), f'version = "{new}"'))
    house, upgrade = tmp / "wheels", tmp / "wheels-upgrade"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    builds = [subprocess.Popen([*pip, "--wheel-dir", str(house), str(src)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
              subprocess.Popen([*pip, "--no-deps", "--wheel-dir", str(upgrade),
                                str(upgrade_src)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    for build in builds:
        out, _ = build.communicate(timeout=600)
        assert build.returncode == 0, out.decode(errors="replace")[-4000:]
    (wheel,) = house.glob("hacluster-*.whl")
    (upgrade_wheel,) = upgrade.glob("hacluster-*.whl")
    return house, wheel, upgrade_wheel, new


class Deployment:
    """Inventory hosts on this machine (connection local), one node each: n1, n2, n3 at first;
    ``add_host`` and ``remove_host`` change the inventory's group."""

    def __init__(self, root: Path, python: str, dedicated_user: bool, house: Path,
                 wheel: Path) -> None:
        self.root = root
        self.names = list(NAMES)       # the hosts of the group `hacluster`, in order
        self.deployed = list(NAMES)    # every host ever in it (stop() stops them all)
        ports = free_ports(6)
        self.api = dict(zip(NAMES, ports[:3], strict=True))
        self.raft = dict(zip(NAMES, ports[3:], strict=True))
        self.user = "hacluster" if dedicated_user else "root"
        self.inventory = root / "inventory.yml"
        self.admin_token = ADMIN_TOKEN
        # The CA the role makes on the controller (hacluster_tls_pki_dir's default).
        self.ca_file = root / "pki" / "ansible-test" / "ca.crt"
        self.group_vars: dict[str, Any] = {
            "hacluster_service_manager": "process",
            "hacluster_python": python,
            "hacluster_system_packages": [],
            "hacluster_tokens": [entry(ADMIN_ENTRY), entry(WRITE_ENTRY),
                                 entry(REPLICATION_ENTRY)],
            "hacluster_admin_token": ADMIN_TOKEN,
            "hacluster_replication_token": REPLICATION_TOKEN,
            # TLS is on by default; without mutual TLS the nodes use their replication token.
            "hacluster_tls_peer_client_auth": False,
            "hacluster_raft_password": RAFT_PASSWORD,
            "hacluster_cluster_name": "ansible-test",
            "hacluster_column_families": ["default", "users"],
            "hacluster_package_file": str(wheel),
            "hacluster_pip_extra_args": f"--no-index --find-links {house}",
            "hacluster_wait_timeout": 60,
            "hacluster_hooks": {"on_role_change": "true", "timeout_s": 5},
            # The playbooks must hand over by switchover only (step 10 checks the history);
            # the default lease (0.6 s) lapsed once while pip installed n4's package on two
            # busy cores (Raft elections, then a failover). Timings a busy CI machine keeps.
            "hacluster_consensus": {"lease_s": 2.0, "renew_interval_s": 0.2,
                                    "election_min_s": 0.5, "election_max_s": 1.0,
                                    "raft_heartbeat_s": 0.1},
        }
        if not dedicated_user:
            self.group_vars |= {"hacluster_manage_user": False, "hacluster_user": "root",
                                "hacluster_group": "root"}
        self.write_inventory()

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def trust_ca(self) -> None:
        """Speak https to every node's API, verified against the role's CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        for port in self.api.values():
            TLS_PORTS[port] = context

    def served_serials(self) -> dict[str, int]:
        """The serial number of the certificate each node serves."""
        return {n: x509.load_pem_x509_certificate(ssl.get_server_certificate(
                    ("127.0.0.1", self.api[n]), timeout=5).encode()).serial_number
                for n in self.names}

    def write_inventory(self, *, drop: tuple[str, ...] = (), **group_vars: Any) -> None:
        self.group_vars |= group_vars
        for name in drop:
            self.group_vars.pop(name, None)
        hosts = {}
        for name in self.names:
            d = self.host_dir(name)
            hosts[name] = {
                "ansible_connection": "local", "ansible_become": False,
                "ansible_python_interpreter": sys.executable,
                "hacluster_api_address": f"127.0.0.1:{self.api[name]}",
                "hacluster_raft_address": f"127.0.0.1:{self.raft[name]}",
                "hacluster_data_dir": str(d / "data"),
                "hacluster_install_dir": str(d / "opt"),
                "hacluster_config_dir": str(d / "etc"),
                "hacluster_log_dir": str(d / "log"),
                "hacluster_run_dir": str(d / "run"),
            }
        self.inventory.write_text(yaml.safe_dump(
            {"all": {"children": {"hacluster": {"hosts": hosts, "vars": self.group_vars}}}}))

    def add_host(self, name: str) -> None:
        """A new host at the end of the group, with ports of its own."""
        self.api[name], self.raft[name] = free_ports(2)
        self.names.append(name)
        self.deployed.append(name)
        self.write_inventory()
        if name in self.api and self.ca_file.exists():
            self.trust_ca()

    def remove_host(self, name: str) -> None:
        self.names.remove(name)
        self.write_inventory()

    def pids(self, names: list[str] | None = None) -> dict[str, int]:
        return {n: int((self.host_dir(n) / "run" / "hacluster.pid").read_text())
                for n in names or self.names}

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(name, "127.0.0.1", self.api[name])

    def get(self, name: str, path: str) -> Any:
        answer = request(self.api[name], "GET", path, token=self.admin_token, timeout=5)
        assert answer.status == 200, (name, path, answer.status, answer.body)
        return answer.json()

    def leaders(self) -> dict[str, str | None]:
        out = {}
        for name in self.names:
            answer = request(self.api[name], "GET", "/leader", token=None, timeout=3)
            out[name] = answer.json()["leader"] if answer.status == 200 else None
        return out

    def primary(self) -> str:
        """The primary every node of the group names (waits up to 30 s for them to agree)."""
        leaders = wait_for(lambda: (lv if len(set((lv := self.leaders()).values())) == 1
                                    and None not in lv.values() else None),
                           30, "every node to name the same primary")
        return str(next(iter(leaders.values())))

    def raft_members(self) -> dict[str, list[str]]:
        return {n: sorted(self.get(n, "/status")["consensus"]["raft"]["members"])
                for n in self.names}

    def installed_version(self, name: str) -> str:
        python = self.host_dir(name) / "opt" / "venv" / "bin" / "python"
        return subprocess.run([str(python), "-I", "-c", "import importlib.metadata as m; "
                               "print(m.version('hacluster'))"], capture_output=True,
                              text=True, check=True).stdout.strip()

    def stop(self) -> None:
        """Stop every node: the role's launcher, then a kill of whatever is left."""
        for name in self.deployed:
            ctl = self.host_dir(name) / "opt" / "bin" / "hacluster-service"
            if ctl.exists():
                subprocess.run([str(ctl), "stop"], capture_output=True, timeout=60,
                               check=False)
            pidfile = self.host_dir(name) / "run" / "hacluster.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Deployment, Path, str]]:
    if os.geteuid() != 0:
        pytest.skip("the role creates a system user and root-owned files: run as root")
    python = service_python()
    dedicated_user = python is not None
    opened: dict[Path, int] = {}
    if not dedicated_user:
        # Only this interpreter (maybe under /root): the nodes then run as root.
        python = str(Path(getattr(sys, "_base_executable", sys.executable)))
    else:
        # pytest makes its temporary directories 0700 (and /tmp/pytest-of-root): the service
        # user must pass through them to its files. Only the search bit is added, until the
        # end of the test.
        for d in (tmp_path, *tmp_path.parents):
            mode = d.stat().st_mode
            if mode & 0o001:
                break
            opened[d] = mode
            d.chmod(mode | 0o011)
    assert python is not None
    try:
        house, wheel, upgrade_wheel, new_version = build_wheels(tmp_path)
        deploy = Deployment(tmp_path, python, dedicated_user, house, wheel)
        try:
            yield deploy, upgrade_wheel, new_version
        finally:
            deploy.stop()
            for port in deploy.api.values():
                TLS_PORTS.pop(port, None)
    finally:
        for d, mode in opened.items():
            d.chmod(mode)


@pytest.mark.slow
def test_site_then_rolling_upgrade_then_add_and_remove_a_node_lose_no_write(
        deployment: tuple[Deployment, Path, str], tmp_path: Path) -> None:
    deploy, upgrade_wheel, new_version = deployment

    # 1. site.yml: three nodes that elect a primary every node names.
    run_playbook(tmp_path, "site.yml", deploy.inventory, "site-1.log")
    deploy.trust_ca()        # from now on every request here is https, verified by the CA
    primary = deploy.primary()
    assert primary in NAMES
    assert request(deploy.api[primary], "GET", "/primary", token=None).status == 200
    pids = deploy.pids()
    first = deploy.host_dir("n1")
    config = (first / "etc" / "cluster.yaml").read_text()
    for secret in (ADMIN_TOKEN, WRITE_TOKEN, REPLICATION_TOKEN, RAFT_PASSWORD):
        assert secret not in config
    assert ADMIN_ENTRY.sha256 in config and "peer_client_auth: false" in config
    assert ((first / "etc" / "hacluster.env").stat().st_mode & 0o777) == 0o600
    assert ((first / "etc" / "replication-token").stat().st_mode & 0o777) == 0o640
    assert ((first / "etc" / "tls" / "n1.key").stat().st_mode & 0o777) == 0o640
    assert deploy.get(primary, "/status")      # an admin token, over https
    assert request(deploy.api[primary], "GET", "/v1/kv/x", token=None).status == 401
    data = first / "data"
    assert (data.owner(), data.stat().st_mode & 0o777) == (deploy.user, 0o750)

    # 2. That a second run changes nothing and restarts nothing is checked once, in step 9,
    # on the upgraded, rotated cluster: the same playbook on the same hosts (a run here cost
    # 25 s of the suite and found nothing step 9 would not).

    # 3. site.yml does not upgrade a running node: that is the rolling upgrade's job.
    deploy.write_inventory(hacluster_package_file=str(upgrade_wheel))
    refused = run_playbook(tmp_path, "site.yml", deploy.inventory, "site-3.log",
                           "--limit", "n1", rc=2)
    assert "Upgrade a running cluster with rolling-upgrade.yml" in refused, refused
    assert recap(refused)["n1"]["failed"] == 1, recap(refused)
    assert deploy.pids() == pids

    writer = Writer([deploy.endpoint(n) for n in NAMES], token=WRITE_TOKEN, prefix="ansible",
                    timeout=3.0)
    writer.start()
    try:
        # 4. The rolling upgrade to the new wheel while a client writes through the nodes' API.
        writer.wait_acked(100, 30)
        started = time.monotonic()
        run_playbook(tmp_path, "rolling-upgrade.yml", deploy.inventory, "upgrade.log")
        writer.wait_acked(100, 30, since=time.monotonic())
        after = deploy.pids()
        assert all(after[n] != pids[n] for n in NAMES), (pids, after)
        assert {n: deploy.installed_version(n) for n in NAMES} == dict.fromkeys(
            NAMES, new_version)
        assert {n: deploy.get(n, "/health")["version"] for n in NAMES} == dict.fromkeys(
            NAMES, new_version)
        upgraded = deploy.primary()
        assert upgraded != primary, f"{primary} is still primary: no switchover happened"
        epochs = deploy.get(upgraded, "/history")
        assert [e["reason"] for e in epochs] == ["bootstrap", "switchover"], epochs
        assert deploy.get(upgraded, "/cluster")["paused"] is False
        assert any(op.start > started for op in writer.acked() if op.epoch == 1)

        # 5. site.yml refuses a host added to the inventory that is not a Raft member yet.
        deploy.add_host("n4")
        refused = run_playbook(tmp_path, "site.yml", deploy.inventory, "site-4.log", rc=2)
        assert "add-node.yml" in refused and "Not members: n4" in refused, refused[-3000:]
        assert not (deploy.host_dir("n4") / "opt").exists()

        # 6. add-node.yml: n4 joins; the running nodes get the new config without a restart.
        run_playbook(tmp_path, "add-node.yml", deploy.inventory, "add-node.log",
                     "-e", "hacluster_new_node=n4")
        assert deploy.pids(list(NAMES)) == after, "add-node.yml restarted a running node"
        for name in NAMES:
            assert "name: n4" in (deploy.host_dir(name) / "etc" / "cluster.yaml").read_text()
        writer.nodes.append(deploy.endpoint("n4"))
        writer.wait_acked(100, 30, since=time.monotonic())
        members = deploy.raft_members()
        assert all(len(m) == 4 for m in members.values()), members
        assert deploy.get("n4", "/health")["version"] == new_version
        wait_for(lambda: request(deploy.api["n4"], "GET", "/replica", token=None).status == 200,
                 30, "n4 to stream from the primary")

        # 7. remove-node.yml on the primary: a switchover first, then it leaves; the others
        # keep running with three Raft members, and its data is deleted (purge).
        leaving = deploy.primary()
        remaining = [n for n in deploy.names if n != leaving]
        before = deploy.pids(remaining)
        run_playbook(tmp_path, "remove-node.yml", deploy.inventory, "remove-node.log",
                     "-e", f"hacluster_remove_node={leaving}", "-e", "hacluster_remove_purge=true")
        deploy.remove_host(leaving)
        assert deploy.pids() == before, "remove-node.yml restarted a remaining node"
        assert not (deploy.host_dir(leaving) / "data").exists()
        with pytest.raises(OSError):        # stopped: nothing listens
            request(deploy.api[leaving], "GET", "/health", token=None, timeout=3)
        members = deploy.raft_members()
        assert all(m == sorted(f"127.0.0.1:{deploy.raft[n]}" for n in remaining)
                   for m in members.values()), members
        for name in remaining:
            config = (deploy.host_dir(name) / "etc" / "cluster.yaml").read_text()
            assert f"name: {leaving}" not in config, config
        assert deploy.primary() != leaving
        writer.wait_acked(100, 30, since=time.monotonic())

        # 8. rotate-secrets.yml under the writer: new admin and replication tokens (the old
        # ones retired), new certificates from the same CA, a new Raft password in three
        # rolling phases (one switchover each). No restart but those of the Raft phases.
        serials = deploy.served_serials()
        deploy.write_inventory(
            hacluster_tokens=[entry(e) for e in (ADMIN_ENTRY, WRITE_ENTRY, REPLICATION_ENTRY,
                                                  NEW_ADMIN_ENTRY, NEW_REPLICATION_ENTRY)],
            hacluster_retired_token_ids=[ADMIN_ENTRY.id, REPLICATION_ENTRY.id],
            hacluster_admin_token=NEW_ADMIN_TOKEN,
            hacluster_replication_token=NEW_REPLICATION_TOKEN,
            hacluster_raft_password_next=NEXT_RAFT_PASSWORD)
        rotated = run_playbook(tmp_path, "rotate-secrets.yml", deploy.inventory, "rotate.log")
        assert "move hacluster_raft_password_next into hacluster_raft_password" in rotated, \
            rotated[-3000:]
        deploy.admin_token = NEW_ADMIN_TOKEN
        writer.wait_acked(100, 30, since=time.monotonic())
        final = deploy.primary()
        old = request(deploy.api[final], "GET", "/v1/admin/hash", token=ADMIN_TOKEN)
        assert old.status == 403, (old.status, old.body)
        assert request(deploy.api[final], "GET", "/v1/admin/hash",
                       token=NEW_ADMIN_TOKEN).status == 200
        assert request(deploy.api[final], "POST", "/v1/replication/ack", body=b"{}",
                       token=REPLICATION_TOKEN).status == 403
        new_serials = deploy.served_serials()
        assert all(new_serials[n] != serials[n] for n in deploy.names), (serials, new_serials)
        for name in deploy.names:
            etc = deploy.host_dir(name) / "etc"
            env = (etc / "hacluster.env").read_text()
            assert f"HACLUSTER_RAFT_PASSWORD={NEXT_RAFT_PASSWORD}\n" in env
            assert "ALSO_ACCEPTED" not in env and RAFT_PASSWORD + "\n" not in env
            assert f"HACLUSTER_TOKEN={NEW_ADMIN_TOKEN}\n" in env
            assert (etc / "replication-token").read_text() == NEW_REPLICATION_TOKEN + "\n"
            config = (etc / "cluster.yaml").read_text()
            assert ADMIN_ENTRY.id not in config and NEW_ADMIN_ENTRY.id in config
            assert NEW_ADMIN_TOKEN not in config and NEXT_RAFT_PASSWORD not in config

        # 9. The operator moves the new password into place and deletes the retired entries:
        # site.yml then changes nothing and restarts nothing.
        rotated_pids = deploy.pids()
        deploy.write_inventory(
            drop=("hacluster_raft_password_next",),
            hacluster_raft_password=NEXT_RAFT_PASSWORD,
            hacluster_tokens=[entry(e) for e in (WRITE_ENTRY, NEW_ADMIN_ENTRY,
                                                  NEW_REPLICATION_ENTRY)],
            hacluster_retired_token_ids=[])
        again = recap(run_playbook(tmp_path, "site.yml", deploy.inventory, "site-5.log"))
        assert set(again) == set(deploy.names), again
        assert all(row["changed"] == 0 and row["failed"] == 0 for row in again.values()), again
        assert deploy.pids() == rotated_pids
        writer.wait_acked(100, 30, since=time.monotonic())
    finally:
        history = writer.stop()

    # 10. Every node has the primary's data; only switchovers, no failover; no request of the
    # writer refused for its credentials.
    wait_for(lambda: len({str(deploy.get(n, "/v1/admin/hash")) for n in deploy.names}) == 1,
             30, "every node to have the primary's data")
    epochs = deploy.get(final, "/history")
    # rolling upgrade, remove-node, and one switchover per Raft password phase
    assert [e["reason"] for e in epochs] == ["bootstrap"] + ["switchover"] * 5, epochs
    refused = [op for op in history if op.status in (401, 403)]
    assert not refused, refused[:5]
    acked = history.acked()
    assert {op.epoch for op in acked} == set(range(1, 7)), "writes were not acknowledged throughout"

    # 11. Nothing acknowledged is missing from the final primary.
    deploy.stop()
    _, contents = read_db(deploy.host_dir(final) / "data" / "db")
    verdict = check_all(history, set(contents["default"]))
    assert verdict.ok, str(verdict)
    assert verdict.notes["acked_missing_from_final"] == 0
