"""Prometheus metrics of one daemon (its own registry: no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ringd.status import Status

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.detection_latency = Histogram(
            "ringd_detection_latency_seconds",
            "From a file's last write (its mtime) to its new games being committed",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scan_duration = Histogram(
            "ringd_scan_duration_seconds",
            "Reconciliation scans of all watched roots",
            ["reason"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.jobs = Counter(
            "ringd_jobs", "Training jobs by outcome", ["config", "state"], registry=self.registry
        )
        self.training_duration = Histogram(
            "ringd_training_duration_seconds",
            "Training jobs from start to end",
            ["config", "state"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "ringd_queue_wait_seconds",
            "From a config becoming ready to its job starting (waiting for a slot)",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600),
            registry=self.registry,
        )

    def track_status(self, status: Callable[[], Status]) -> None:
        """Export per-config counts from `status()` at every scrape."""
        self.registry.register(_StatusCollector(status))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    """Per-config counts straight from the status document at scrape time."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._status()
        games = CounterMetricFamily("ringd_games", "Games counted per config", labels=["config"])
        new = GaugeMetricFamily(
            "ringd_new_games", "Games since the last training", labels=["config"]
        )
        threshold = GaugeMetricFamily(
            "ringd_threshold", "New games that trigger training", labels=["config"]
        )
        for row in status.configs:
            games.add_metric([row.name], row.total_games)
            new.add_metric([row.name], row.new_games)
            if row.threshold is not None:
                threshold.add_metric([row.name], row.threshold)
        rejects = CounterMetricFamily(
            "ringd_rejects", "Rejected lines by reason", labels=["reason"]
        )
        for reason, n in status.rejects.items():
            rejects.add_metric([reason], n)
        config_error = GaugeMetricFamily(
            "ringd_config_error", "1 while an invalid config edit is refused"
        )
        config_error.add_metric([], 1 if status.config_error else 0)
        yield from (games, new, threshold, rejects, config_error)
