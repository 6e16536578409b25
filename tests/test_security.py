"""Role tokens, the access verdict, secret sources and the tls/auth config, without processes."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hacluster.config import ConfigError, HooksConfig, load_config
from hacluster.hooks import Hooks
from hacluster.security.access import ANONYMOUS, Refusal, authorize, need
from hacluster.security.tls import TlsError, client_context, peer_name, server_context
from hacluster.security.tokens import ALL_ROLES, GRANTS, Principal, Role, TokenBook, new_token

LEGACY = "legacy-token-0123456789"
BASE: dict[str, Any] = {
    "cluster": {"name": "demo", "primary": "n1"},
    "tls": "off",
    "replication": {"mode": "async"},
    "nodes": [
        {"name": "n1", "api": "127.0.0.1:8701", "data_dir": "data/n1"},
        {"name": "n2", "api": "127.0.0.1:8702", "data_dir": "data/n2"},
    ],
}


def entry_doc(role: Role, name: str = "") -> tuple[str, dict[str, str]]:
    token, e = new_token(role, name)
    return token, {"id": e.id, "role": e.role.value, "sha256": e.sha256,
                   **({"name": name} if name else {})}


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


# -- tokens ----------------------------------------------------------------------------------

def test_a_token_is_accepted_by_its_hash_only_and_carries_its_role() -> None:
    token, entry = new_token(Role.WRITE, "frontend")
    assert entry.sha256 != token and token not in repr(entry)
    book = TokenBook((entry,))
    who = book.principal(token)
    assert who == Principal(f"token {entry.id} (frontend)", GRANTS[Role.WRITE])
    # A token of the right form but another secret, a prefix, garbage: nobody.
    assert book.principal(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert book.principal(token[:-1]) is None
    assert book.principal("x") is None and book.principal("") is None


def test_roles_grant_what_the_docs_say() -> None:
    assert GRANTS[Role.READ] == {Role.READ}
    assert GRANTS[Role.WRITE] == {Role.READ, Role.WRITE}
    assert Role.REPLICATION not in GRANTS[Role.ADMIN]       # no client role streams the WAL
    assert GRANTS[Role.REPLICATION] == {Role.REPLICATION}
    assert GRANTS[Role.METRICS] == {Role.METRICS}
    assert TokenBook((), LEGACY).principal(LEGACY) == Principal("the cluster token", ALL_ROLES)


# -- the access verdict ----------------------------------------------------------------------

def verdict(method: str, path: str, token: str | None, book: TokenBook, *,
            cert: str | None = None, mutual: bool = False) -> Principal | Refusal:
    return authorize(method, path, f"Bearer {token}" if token else None, peer_cert=cert,
                     book=book, members={"n1", "n2", "n3"}, mutual_tls=mutual)


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/v1/kv/a", Role.READ), ("GET", "/v1/kv", Role.READ), ("GET", "/cluster", Role.READ),
    ("PUT", "/v1/kv/a", Role.WRITE), ("DELETE", "/v1/kv/a", Role.WRITE),
    ("POST", "/v1/batch", Role.WRITE), ("POST", "/v1/admin/switchover", Role.ADMIN),
    ("GET", "/metrics", Role.METRICS), ("GET", "/v1/replication/stream", Role.REPLICATION),
    ("POST", "/v1/replication/ack", Role.REPLICATION),
])
def test_each_route_needs_its_role_and_no_lesser_one(method: str, path: str, role: Role) -> None:
    tokens = {r: new_token(r) for r in Role}
    book = TokenBook(tuple(e for _, e in tokens.values()))
    for r, (token, _) in tokens.items():
        got = verdict(method, path, token, book)
        allowed = bool(GRANTS[r] & need(method, path).roles)
        assert isinstance(got, Principal) is allowed, (r, got)
        if not allowed:
            assert isinstance(got, Refusal) and got.status == 403
            assert f"needs the {role.value}" in got.message and token not in got.message


def test_open_paths_missing_and_malformed_credentials() -> None:
    book = TokenBook((), LEGACY)
    assert verdict("GET", "/primary", None, book) == ANONYMOUS
    assert verdict("GET", "/status", None, book) == ANONYMOUS
    assert verdict("GET", "/v1/kv/a", None, book) == Refusal(
        401, "missing Authorization: Bearer <token>")
    for header in (LEGACY, f"Basic {LEGACY}", "Bearer ", "Bearer"):
        got = authorize("GET", "/v1/kv/a", header, peer_cert=None, book=book, members=(),
                        mutual_tls=False)
        assert isinstance(got, Refusal) and got.status == 401, header
    assert verdict("GET", "/v1/kv/a", "wrong-token-0123456789", book) == Refusal(
        403, "unknown token")


def test_mutual_tls_replication_needs_a_members_certificate() -> None:
    admin, e_admin = new_token(Role.ADMIN)
    repl, e_repl = new_token(Role.REPLICATION)
    book = TokenBook((e_admin, e_repl), LEGACY)
    stream = "/v1/replication/stream"
    got = verdict("GET", stream, None, book, cert="n2", mutual=True)
    assert isinstance(got, Principal) and got.node == "n2" and got.roles == {Role.REPLICATION}
    for token, cert in ((repl, None), (LEGACY, None), (admin, None), (repl, "stranger")):
        got = verdict("GET", stream, token, book, cert=cert, mutual=True)
        assert isinstance(got, Refusal) and got.status == 403
        assert "certificate of a cluster member" in got.message
    # Checkpoints: a member's certificate, or a CA-signed certificate with an admin token.
    ckpt = "/v1/replication/checkpoints"
    assert isinstance(verdict("POST", ckpt, None, book, cert="n3", mutual=True), Principal)
    assert isinstance(verdict("POST", ckpt, admin, book, cert="backup", mutual=True),
                      Principal)
    assert isinstance(verdict("POST", ckpt, admin, book, mutual=True), Refusal)
    assert isinstance(verdict("POST", ckpt, repl, book, cert="backup", mutual=True), Refusal)
    # Without mutual TLS the replication token (or the legacy one) is the credential.
    assert isinstance(verdict("GET", stream, repl, book), Principal)
    assert isinstance(verdict("GET", stream, admin, book), Refusal)


def test_peer_name_reads_the_common_name() -> None:
    cert = {"subject": ((("organizationName", "hacluster"),), (("commonName", "n2"),))}
    assert peer_name(cert) == "n2"
    assert peer_name(None) is None and peer_name({}) is None


# -- secrets and the tls / auth sections ----------------------------------------------------

def test_tls_is_required_and_off_must_be_said(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["cluster"]["token"] = LEGACY
    del doc["tls"]
    assert "tls: required" in error_of(write(tmp_path, doc))
    for off in ("off", False):
        doc["tls"] = off
        assert load_config(write(tmp_path, doc), env={}).tls.enabled is False
    doc["tls"] = "on"
    assert "tls: expected a mapping or `off`" in error_of(write(tmp_path, doc))
    doc["tls"] = {"cert_file": "pki/{node}.crt", "key_file": "pki/{node}.key",
                  "ca_file": "pki/ca.crt", "bogus": 1}
    assert "tls.bogus: unknown key" in error_of(write(tmp_path, doc))
    del doc["tls"]["bogus"]
    cfg = load_config(write(tmp_path, doc), env={})
    assert cfg.tls.enabled and cfg.nodes[0].api.url == "https://127.0.0.1:8701"
    assert cfg.tls.for_node("n2").cert_file == tmp_path / "pki" / "n2.crt"
    assert cfg.tls.ca_file == tmp_path / "pki" / "ca.crt"


def test_auth_tokens_are_validated_with_key_and_file(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    _, good = entry_doc(Role.WRITE, "app")
    repl_token, repl = entry_doc(Role.REPLICATION)
    doc["auth"] = {"tokens": [good, repl], "replication_token": repl_token}
    cfg = load_config(write(tmp_path, doc), env={})
    assert [e.role for e in cfg.auth.tokens] == [Role.WRITE, Role.REPLICATION]
    assert cfg.token is None and cfg.peer_token == repl_token
    path = tmp_path / "cluster.yaml"
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "role": "root"}, "auth.tokens[0].role: must be one of read, write, admin"),
        ({**good, "id": "xyz"}, "auth.tokens[0].id: expected 8 hex digits"),
        ({**good, "sha256": "abc"}, "auth.tokens[0].sha256: expected the token's SHA-256"),
        ({**good, "extra": 1}, "auth.tokens[0].extra: unknown key"),
    ]
    for bad, message in cases:
        doc["auth"]["tokens"] = [bad, repl]
        error = error_of(write(tmp_path, doc))
        assert error.startswith(f"{path}: ") and message in error, error
    doc["auth"]["tokens"] = [good, {**repl, "id": good["id"]}]
    assert f"duplicate token id {good['id']}" in error_of(write(tmp_path, doc))
    # The node's own replication token must be one the others accept.
    doc["auth"] = {"tokens": [good, repl], "replication_token": "some-other-token-012345"}
    assert "auth.replication_token: matches no token of role replication" in \
        error_of(write(tmp_path, doc))
    doc["auth"] = {"tokens": [good, repl]}
    assert "auth.replication_token: required" in error_of(write(tmp_path, doc))
    doc["auth"] = {"tokens": [good]}
    doc["tls"] = {"cert_file": "a", "key_file": "b", "ca_file": "c", "peer_client_auth": True}
    assert load_config(write(tmp_path, doc), env={}).auth.replication_token is None


def test_role_tokens_never_become_the_shared_token(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    _, good = entry_doc(Role.WRITE)
    token, repl = entry_doc(Role.REPLICATION)
    doc["auth"] = {"tokens": [good, repl], "replication_token": token}
    admin, _ = new_token(Role.ADMIN)
    # An operator's $HACLUSTER_TOKEN is a tool's credential, not the nodes' shared token.
    assert load_config(write(tmp_path, doc), env={"HACLUSTER_TOKEN": admin}).token is None
    doc["cluster"]["token"] = admin
    assert "cluster.token: is a role token" in error_of(write(tmp_path, doc))


def test_secrets_come_from_env_file_credential_then_config(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["cluster"]["token"] = "inline-token-0123456789"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("file-token-0123456789\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("credential-token-0123456789")
    path = write(tmp_path, doc)
    assert load_config(path, env={}).token == "inline-token-0123456789"
    assert load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)}).token == \
        "credential-token-0123456789"
    doc["cluster"]["token_file"] = "token.txt"           # relative to the config file
    path = write(tmp_path, doc)
    assert load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)}).token == \
        "file-token-0123456789"
    assert load_config(path, env={"HACLUSTER_TOKEN": "env-token-0123456789"}).token == \
        "env-token-0123456789"


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"), (b"", "is empty"), (b"\n", "is empty"),
    (b"x" * 5000, "larger than 4096 bytes"), (b"\xff\xfe", "is not UTF-8"),
    (b"short\n", "must be at least 16 characters"),
    (b"has\x01control-characters", "must not contain control characters"),
])
def test_a_bad_secret_file_names_the_key_and_the_file(tmp_path: Path, content: bytes | None,
                                                      message: str) -> None:
    doc = copy.deepcopy(BASE)
    secret = tmp_path / "raft.secret"
    if content is not None:
        secret.write_bytes(content)
    doc["cluster"]["token"] = LEGACY
    doc["cluster"]["raft_password_file"] = str(secret)
    error = error_of(write(tmp_path, doc))
    assert "cluster.raft_password_file" in error and message in error, error
    assert "control-characters" not in error        # the content is never shown


# -- TLS files and hook environments ---------------------------------------------------------

def test_unusable_certificate_files_are_named(tmp_path: Path) -> None:
    from hacluster.config import TlsConfig
    missing = TlsConfig(True, tmp_path / "n1.crt", tmp_path / "n1.key", tmp_path / "ca.crt")
    with pytest.raises(TlsError, match=r"n1\.crt: no such file \(tls\.cert_file\)"):
        server_context(missing)
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(TlsError, match=r"ca\.crt: not a usable CA certificate"):
        client_context(missing, present_certificate=False)


def test_hooks_never_see_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "env.txt"
    for name in ("HACLUSTER_TOKEN", "HACLUSTER_RAFT_PASSWORD", "HACLUSTER_REPLICATION_TOKEN",
                 "CREDENTIALS_DIRECTORY"):
        monkeypatch.setenv(name, f"secret-of-{name}")
    hooks = Hooks(HooksConfig(on_promote=f"env > {out}"), "n1")

    async def fire() -> None:
        hooks.fire("promote", role="primary", epoch=2, primary="n1")
        deadline = time.monotonic() + 10
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(fire())
    env = out.read_text()
    assert "HACLUSTER_NODE=n1" in env and "HACLUSTER_EPOCH=2" in env
    assert "secret-of-" not in env
    assert os.environ["HACLUSTER_TOKEN"] == "secret-of-HACLUSTER_TOKEN"
