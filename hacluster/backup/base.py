"""Base backups: a checkpoint of the primary uploaded file by file, and downloaded again.

Owns uploading a checkpoint directory in parts (``layout.PART_BYTES``) with the manifest last
(seq, epoch, node, time, column families, each file's size and SHA-256, and the epoch history),
reading a manifest, and downloading a base backup into a directory with every part and every
file verified. A base backup without its manifest is unfinished and is never used. Blocking
I/O: callers on the event loop run these in a thread. It must never publish a manifest before
every part is stored, and never leave a downloaded file whose checksum did not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.backup import BackupError
from hacluster.backup.layout import PART_BYTES, BaseRef, base_manifest_name, base_part_name
from hacluster.backup.objects import Archive

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


def upload_files(archive: Archive, bid: str, db_dir: Path,
                 on_bytes: Callable[[int], None] = lambda n: None) -> list[dict[str, Any]]:
    """Upload every file of ``db_dir``; their manifest entries."""
    files = []
    for path in sorted(p for p in db_dir.iterdir() if p.is_file()):
        digest = hashlib.sha256()
        size = part = 0
        with open(path, "rb") as f:
            while True:
                chunk = f.read(PART_BYTES)
                if not chunk and part > 0:
                    break
                digest.update(chunk)
                archive.put(base_part_name(bid, path.name, part), chunk)
                size += len(chunk)
                part += 1
                on_bytes(len(chunk))
                if len(chunk) < PART_BYTES:
                    break
        files.append({"name": path.name, "size": size, "sha256": digest.hexdigest(),
                      "parts": part})
    return files


def publish(archive: Archive, bid: str, manifest: dict[str, Any]) -> None:
    """Write the manifest: from now on the base backup exists."""
    archive.put(base_manifest_name(bid), json.dumps(
        {"format": MANIFEST_FORMAT, "id": bid, **manifest}, sort_keys=True).encode())


def read_manifest(archive: Archive, base: BaseRef) -> dict[str, Any]:
    data = archive.get(base.manifest)
    try:
        doc = json.loads(data)
        if doc.get("format") != MANIFEST_FORMAT:
            raise BackupError(f"{archive.url}/{base.manifest}: manifest format "
                              f"{doc.get('format')!r}, this hacluster reads {MANIFEST_FORMAT}")
        int(doc["seq"]), int(doc["epoch"]), list(doc["files"]), list(doc["column_families"])
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{archive.url}/{base.manifest}: not a valid manifest: {exc}") \
            from None
    if (doc["seq"], doc["epoch"]) != (base.seq, base.epoch):
        raise BackupError(f"{archive.url}/{base.manifest}: says seq {doc['seq']} epoch "
                          f"{doc['epoch']}, its name says seq {base.seq} epoch {base.epoch}")
    result: dict[str, Any] = doc
    return result


def download(archive: Archive, base: BaseRef, manifest: dict[str, Any], target: Path,
             on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Every file of the base backup into ``target`` (a new directory), verified."""
    target.mkdir(parents=True, exist_ok=False)
    for entry in manifest["files"]:
        name = str(entry["name"])
        if "/" in name or name in ("", ".", ".."):
            raise BackupError(f"{archive.url}/{base.manifest}: bad file name {name!r}")
        digest = hashlib.sha256()
        size = 0
        with open(target / name, "wb") as f:
            for part in range(int(entry["parts"])):
                chunk = archive.get(base_part_name(base.id, name, part))
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
                on_bytes(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise BackupError(f"{archive.url}/base/{base.id}: file {name} is {size} bytes with "
                              f"SHA-256 {digest.hexdigest()[:16]}…, the manifest says "
                              f"{entry['size']} bytes, {str(entry['sha256'])[:16]}…: corrupted")
