"""Prometheus metrics of one daemon (its own registry: no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

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

        self.remote_pulls = Counter(
            "ringd_remote_pulls",
            "rsync pulls of each remote by outcome (ok, failed)",
            ["remote", "outcome"],
            registry=self.registry,
        )
        self.remote_bytes = Counter(
            "ringd_remote_bytes",
            "Bytes pulls added to each remote's target tree",
            ["remote"],
            registry=self.registry,
        )
        self.remote_pull_duration = Histogram(
            "ringd_remote_pull_duration_seconds",
            "Successful pulls from start to end",
            ["remote"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.publishes = Counter(
            "ringd_publish",
            "Checkpoints copied to each publish destination by outcome (ok, failed)",
            ["dest", "outcome"],
            registry=self.registry,
        )

    def track_status(self, status: Callable[[], Status]) -> None:
        """Export per-config counts from `status()` at every scrape."""
        self.registry.register(_StatusCollector(status))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_STATES = ("unconfigured", "idle", "ready", "training", "backoff", "paused")


def _operations_metrics(status: Status) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """What dashboards and alerts watch (contrib/): states, jobs, ingest health, RAM disks."""
    state = GaugeMetricFamily(
        "ringd_config_state",
        "1 for the state each config is in (idle, ready, training, backoff, paused, unconfigured)",
        labels=["config", "state"],
    )
    last_game = GaugeMetricFamily(
        "ringd_last_game_timestamp_seconds",
        "When the newest game of each config was counted",
        labels=["config"],
    )
    samples = GaugeMetricFamily(
        "ringd_job_samples_per_second",
        "Training throughput of each running job",
        labels=["config", "slot"],
    )
    gpu = GaugeMetricFamily(
        "ringd_job_gpu_utilization_percent",
        "GPU utilisation of each running job's device (NVML)",
        labels=["config", "slot"],
    )
    job_progress = GaugeMetricFamily(
        "ringd_job_progress_ratio", "Steps done / total of each running job", labels=["config"]
    )
    for row in status.configs:
        for name in _STATES:
            state.add_metric([row.name, name], 1 if row.state == name else 0)
        if row.last_game_at is not None:
            last_game.add_metric([row.name], row.last_game_at)
        job = row.job
        if job is not None:
            slot = job.slot or ""
            if job.samples_per_s is not None:
                samples.add_metric([row.name, slot], job.samples_per_s)
            if job.gpu_util is not None:
                gpu.add_metric([row.name, slot], job.gpu_util)
            if job.step is not None and job.total_steps:
                job_progress.add_metric([row.name], job.step / job.total_steps)
    trainer = GaugeMetricFamily(
        "ringd_trainer_available",
        "0 while the trainer preflight fails (no training job can start)",
    )
    trainer.add_metric([], 0 if status.trainer_unavailable else 1)
    unreadable = GaugeMetricFamily(
        "ringd_unreadable_paths",
        "Files and directories below the watched roots that cannot be read",
    )
    unreadable.add_metric([], status.unreadable.count)
    daemon = status.daemon or {}
    ingest_errors = CounterMetricFamily(
        "ringd_ingest_errors",
        "Ledger writes of ingest that failed (disk full, I/O error) and were retried",
    )
    errors = daemon.get("ingest_errors")
    ingest_errors.add_metric([], errors if isinstance(errors, int) else 0)
    oldest = GaugeMetricFamily(
        "ringd_ramdisk_oldest_unflushed_seconds",
        "Age of the oldest RAM-disk game not yet on persistent storage (0: none pending)",
        labels=["source"],
    )
    pending = GaugeMetricFamily(
        "ringd_ramdisk_pending_games",
        "RAM-disk games not yet on persistent storage",
        labels=["source"],
    )
    ramdisk_errors = CounterMetricFamily(
        "ringd_ramdisk_write_errors", "Failed writes to a RAM-disk target", labels=["source"]
    )
    for m in status.ramdisk:
        oldest.add_metric([m.source], m.oldest_pending_age_s or 0.0)
        pending.add_metric([m.source], m.pending_games)
        ramdisk_errors.add_metric([m.source], m.errors)
    yield from (state, last_game, samples, gpu, job_progress, trainer, unreadable)
    yield from (ingest_errors, oldest, pending, ramdisk_errors)


class RejectCounter:
    """`ringd_rejects_total`: never going down, as a Prometheus counter must.

    The ledger holds the rejects of each file as it was last read, so its counts drop
    when a file is rewritten without its bad lines (and rise again when a rewrite is
    read from the start). Each scrape adds what a reason's count rose by since the
    last one, and ignores falls, so `rate()` never sees a false counter reset.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._total: dict[str, int] = {}

    def observe(self, current: Mapping[str, int]) -> dict[str, int]:
        """The counter per reason, given the ledger's current reject counts."""
        for reason in self._last.keys() | current.keys():
            now, before = current.get(reason, 0), self._last.get(reason, 0)
            self._total[reason] = self._total.get(reason, 0) + max(0, now - before)
        self._last = dict(current)
        return dict(self._total)


class _StatusCollector(Collector):
    """Per-config counts straight from the status document at scrape time."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status
        self._rejects = RejectCounter()

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
        for reason, n in self._rejects.observe(status.rejects).items():
            rejects.add_metric([reason], n)
        config_error = GaugeMetricFamily(
            "ringd_config_error", "1 while an invalid config edit is refused"
        )
        config_error.add_metric([], 1 if status.config_error else 0)
        yield from _operations_metrics(status)
        yield from (games, new, threshold, rejects, config_error)
        yield from _held_out_metrics(status)
        yield from _remote_metrics(status)
        yield from _publish_metrics(status)


def _remote_metrics(status: Status) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    up = GaugeMetricFamily(
        "ringd_remote_up", "1 unless the remote's last pull failed", labels=["remote"]
    )
    lag = GaugeMetricFamily(
        "ringd_remote_lag_seconds",
        "Age of the newest game pulled from the remote",
        labels=["remote"],
    )
    success = GaugeMetricFamily(
        "ringd_remote_last_success_timestamp_seconds",
        "When the remote's last successful pull began",
        labels=["remote"],
    )
    failures = GaugeMetricFamily(
        "ringd_remote_failures", "Failed pulls in a row", labels=["remote"]
    )
    games = CounterMetricFamily(
        "ringd_remote_games", "Games counted from the remote's target tree", labels=["remote"]
    )
    for r in status.remotes:
        up.add_metric([r.name], 0 if r.failures else 1)
        failures.add_metric([r.name], r.failures)
        games.add_metric([r.name], r.games_total)
        if r.lag_s is not None:
            lag.add_metric([r.name], r.lag_s)
        if r.last_success_at is not None:
            success.add_metric([r.name], r.last_success_at)
    yield from (up, lag, success, failures, games)


def _publish_metrics(status: Status) -> Iterator[GaugeMetricFamily]:
    up = GaugeMetricFamily(
        "ringd_publish_up", "1 unless the last copy to the destination failed", labels=["dest"]
    )
    pending = GaugeMetricFamily(
        "ringd_publish_pending",
        "Configs whose latest is not at the destination yet",
        labels=["dest"],
    )
    success = GaugeMetricFamily(
        "ringd_publish_last_success_timestamp_seconds",
        "When the last copy to the destination succeeded",
        labels=["dest"],
    )
    for d in status.publish:
        up.add_metric([d.dest], 0 if d.failures else 1)
        pending.add_metric([d.dest], len(d.pending))
        if d.last_success_at is not None:
            success.add_metric([d.dest], d.last_success_at)
    yield from (up, pending, success)


def _held_out_metrics(status: Status) -> Iterator[GaugeMetricFamily]:
    """Each config's last job on its held-out games: the new network (model="candidate")
    and the latest it started from (model="latest"), measured on the same samples."""
    labels = ["config", "model"]
    loss = GaugeMetricFamily(
        "ringd_holdout_loss",
        "Held-out loss (policy cross-entropy + value MSE) of the last job's network and of "
        "the latest it started from",
        labels=labels,
    )
    accuracy = GaugeMetricFamily(
        "ringd_holdout_policy_accuracy", "Held-out policy top-1 accuracy", labels=labels
    )
    value = GaugeMetricFamily("ringd_holdout_value_mse", "Held-out value MSE", labels=labels)
    samples = GaugeMetricFamily(
        "ringd_holdout_samples", "Held-out samples the last job evaluated on", labels=["config"]
    )
    promoted = GaugeMetricFamily(
        "ringd_holdout_promoted",
        "1 if the last job's checkpoint was promoted to latest, 0 if not (absent: undecided)",
        labels=["config"],
    )
    for row in status.configs:
        h = row.held_out
        if h is None:
            continue
        for family, candidate, latest in (
            (loss, h.loss, h.start_loss),
            (accuracy, h.policy_acc, h.start_policy_acc),
            (value, h.value_mse, h.start_value_mse),
        ):
            if candidate is not None:
                family.add_metric([row.name, "candidate"], candidate)
            if latest is not None:
                family.add_metric([row.name, "latest"], latest)
        if h.samples is not None:
            samples.add_metric([row.name], h.samples)
        if h.promoted is not None:
            promoted.add_metric([row.name], 1 if h.promoted else 0)
    yield from (loss, accuracy, value, samples, promoted)
