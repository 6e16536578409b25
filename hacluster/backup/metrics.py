"""The archive's Prometheus metrics, read from the archiver at scrape time.

Owns ``backup_metrics``: ``hacluster_backup_archive_lag_seconds`` and ``..._seqs`` (what is
acknowledged but not archived yet), ``hacluster_backup_last_base_backup_timestamp_seconds`` and
``hacluster_backup_errors_total``. Only the primary archives: elsewhere nothing is yielded. It
must never change the archiver's state nor touch the store.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hacluster.backup.archiver import archiver_of


def backup_metrics(node: object) -> Iterator[Metric]:
    archiver = archiver_of(node)
    if archiver is None:
        return
    seqs, seconds = archiver.lag()
    yield GaugeMetricFamily("hacluster_backup_archive_lag_seconds",
                            "age of the oldest acknowledged write not archived yet",
                            value=seconds)
    yield GaugeMetricFamily("hacluster_backup_archive_lag_seqs",
                            "sequence numbers acknowledged but not archived yet", value=seqs)
    last = archiver.status.last_base
    yield GaugeMetricFamily("hacluster_backup_last_base_backup_timestamp_seconds",
                            "when the newest base backup in the archive was taken (unix time)",
                            value=float(last["created"]) if last else float("nan"))
    yield CounterMetricFamily("hacluster_backup_errors", "failed archive operations "
                              "(listing, upload, base backup, retention)",
                              value=float(archiver.status.errors_total))
