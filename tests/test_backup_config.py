"""The ``backup`` config section: defaults, every key's bounds and rules, the secrets from a
file or the environment, each error naming the file and the key; and the dynamic keys laid
over the file's section without losing its secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hacluster.config import ConfigError, load_config
from hacluster.config.dynamic import effective

KEY_HEX = "ab" * 32


def config(tmp_path: Path, backup: dict[str, Any] | None) -> Path:
    doc: dict[str, Any] = {
        "cluster": {"name": "demo", "token": "file-token-0123456789", "primary": "n1"},
        "tls": "off",
        "nodes": [{"name": "n1", "api": "127.0.0.1:8701", "data_dir": "data/n1"}]}
    if backup is not None:
        doc["backup"] = backup
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def refused(tmp_path: Path, backup: dict[str, Any], env: dict[str, str] | None = None) -> str:
    path = config(tmp_path, backup)
    with pytest.raises(ConfigError) as err:
        load_config(path, env or {})
    assert str(path) in str(err.value)
    return str(err.value)


def test_backup_is_off_by_default_and_has_its_defaults(tmp_path: Path) -> None:
    b = load_config(config(tmp_path, None), {}).backup
    assert not b.enabled
    b = load_config(config(tmp_path, {"url": "file:///var/backups/x"}), {}).backup
    assert (b.archive_interval_s, b.base_backup_interval_s, b.keep_last, b.keep_days,
            b.compression, b.encryption) == (5.0, 86400.0, 7, 7.0, "zstd", "none")


@pytest.mark.parametrize(("backup", "message"), [
    ({"url": "ftp://x/y"}, "backup.url: 'ftp://x/y': must be s3://bucket/prefix or file:///path"),
    ({"url": "s3:///prefix"}, "backup.url: 's3:///prefix': names no bucket"),
    ({"url": "file://relative/path"}, "backup.url: 'file://relative/path': a file URL takes "
                                      "an absolute path"),
    ({"url": "s3://b/p", "archive_interval_s": 0}, "backup.archive_interval_s: must be at "
                                                   "least 0.1"),
    ({"url": "s3://b/p", "base_backup_interval_s": -1}, "backup.base_backup_interval_s: must "
                                                        "be at least 0"),
    ({"url": "s3://b/p", "keep_last": 0}, "backup.keep_last: must be at least 1"),
    ({"url": "s3://b/p", "keep_days": -2}, "backup.keep_days: must be at least 0"),
    ({"url": "s3://b/p", "compression": "lz4"}, "backup.compression: must be one of zstd, "
                                                "gzip, none, got 'lz4'"),
    ({"url": "s3://b/p", "encryption": "rot13"}, "backup.encryption: must be one of none, "
                                                 "client, sse-s3, sse-kms"),
    ({"url": "file:///x", "encryption": "sse-s3"}, "backup.encryption: sse-s3 is server-side "
                                                   "encryption: it needs an s3:// url"),
    ({"url": "s3://b/p", "encryption": "sse-kms"}, "backup.kms_key_id: required with "
                                                   "encryption: sse-kms"),
    ({"url": "s3://b/p", "kms_key_id": "k"}, "backup.kms_key_id: only used with encryption: "
                                             "sse-kms"),
    ({"url": "s3://b/p", "encryption": "client"}, "backup.encryption_key: required with "
                                                  "encryption: client"),
    ({"url": "s3://b/p", "encryption": "client", "encryption_key": "ab" * 20},
     "backup.encryption_key: must be 32 bytes (AES-256), got 20"),
    ({"url": "s3://b/p", "encryption": "client", "encryption_key": "not a key!" * 4},
     "backup.encryption_key: must be 32 bytes as 64 hex digits or base64"),
    ({"url": "s3://b/p", "encryption_key": KEY_HEX}, "backup.encryption_key: only used with "
                                                     "encryption: client"),
    ({"url": "s3://b/p", "access_key_id": "AKIA"}, "backup.secret_access_key: access_key_id "
                                                   "and secret_access_key go together"),
    ({"url": "s3://b/p", "endpoint_url": "minio:9000"}, "backup.endpoint_url: 'minio:9000': "
                                                        "must be an http(s) URL"),
    ({"url": "s3://b/p", "segment_max_mb": 100, "max_pending_mb": 10},
     "backup.segment_max_mb: must not exceed max_pending_mb"),
    ({"url": "s3://b/p", "keep_lats": 3}, "backup.keep_lats: unknown key (did you mean "
                                          "'keep_last'?)"),
    ({"encryption": "client", "encryption_key": KEY_HEX}, "backup.url: required when"),
])
def test_each_bad_backup_key_is_named(tmp_path: Path, backup: dict[str, Any],
                                      message: str) -> None:
    assert message in refused(tmp_path, backup)


def test_the_encryption_key_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "backup.key"
    key_file.write_text(KEY_HEX + "\n")
    b = load_config(config(tmp_path, {"url": "s3://b/p", "encryption": "client",
                                      "encryption_key_file": str(key_file)}), {}).backup
    assert b.encryption_key == bytes.fromhex(KEY_HEX)
    assert KEY_HEX not in repr(b)
    env_key = "cd" * 32
    b = load_config(config(tmp_path, {"url": "s3://b/p", "encryption": "client"}),
                    {"HACLUSTER_BACKUP_ENCRYPTION_KEY": env_key}).backup
    assert b.encryption_key == bytes.fromhex(env_key)
    missing = refused(tmp_path, {"url": "s3://b/p", "encryption": "client",
                                 "encryption_key_file": str(tmp_path / "nope")})
    assert "backup.encryption_key_file" in missing and "nope" in missing


def test_the_s3_secret_comes_from_the_environment(tmp_path: Path) -> None:
    b = load_config(config(tmp_path, {"url": "s3://b/p", "access_key_id": "AKIA"}),
                    {"HACLUSTER_BACKUP_SECRET_ACCESS_KEY": "s3cr3t-value"}).backup
    assert (b.access_key_id, b.secret_access_key) == ("AKIA", "s3cr3t-value")
    assert "s3cr3t" not in repr(b)


def test_dynamic_schedule_keys_keep_the_files_secrets(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, {"url": "s3://b/p", "encryption": "client",
                                        "encryption_key": KEY_HEX, "access_key_id": "AKIA",
                                        "secret_access_key": "s3cr3t-value"}), {})
    changed = effective(cfg, {"backup.keep_last": 3, "backup.archive_interval_s": 1.5})
    b = changed.backup
    assert (b.keep_last, b.archive_interval_s) == (3, 1.5)
    assert b.encryption_key == bytes.fromhex(KEY_HEX) and b.secret_access_key == "s3cr3t-value"
    with pytest.raises(ConfigError, match=r"backup\.keep_last: must be at least 1"):
        effective(cfg, {"backup.keep_last": 0})
