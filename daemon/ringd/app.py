"""The daemon: the stages wired into one TaskGroup on uvloop, signals, hot reload.

observer    watchfiles events over the roots -> ingest (hints)
reconciler  a scan at start (then READY), every rescan_interval_s, on demand (truth)
control     HTTP on the Unix socket: status, events, metrics
config      the YAML file watched; SIGHUP too -> reload, or refuse and report
watchdog    WATCHDOG=1 from the event loop itself
follower    the event stream -> ingest rates and systemd STATUS
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
import watchfiles

from ringd import __version__, registry
from ringd.boards import split_config_name
from ringd.control import ControlServer, OperatorError
from ringd.events import EventBus
from ringd.ingest import Ingest
from ringd.jobs import JobRunner, detect_slots
from ringd.jobs import RunningJob as RunningJobHandle
from ringd.ledger import Ledger
from ringd.metrics import Metrics
from ringd.notify import Notifier, watchdog_interval
from ringd.ramdisk import Flusher
from ringd.schedule import ConfigView, Decision, Policy, RunningJob, decide
from ringd.settings import ConfigError, Settings, load_settings
from ringd.status import JobProgress, RamdiskStatus, Scheduling, Status, build_status, status_line
from ringd.scan import SUFFIX

log = structlog.get_logger("ringd")

RATE_WINDOW_S = 60.0
ROOT_POLL_S = 1.0
OBSERVER_BACKOFF_MAX_S = 30.0
FINAL_FLUSH_EXTEND_S = 20.0
SCHEDULE_EVERY_S = 1.0
MODELS_RESCAN_S = 60.0
# Parts of the configuration bound at start: changing them needs a restart.
RESTART_KEYS = ("state_dir", "control")


class _Shutdown(Exception):
    pass


class Daemon:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.config_error: str | None = None
        self.started_at = time.time()
        self.bus = EventBus()
        self.metrics = Metrics(self.status)
        self.notifier = Notifier.from_env()
        self._reader = Ledger(settings.ledger_path)  # status queries, beside the writer
        self.ingest = Ingest(settings.ledger_path, self.bus, self.metrics)
        self.slots = detect_slots(settings.training.devices)
        self._reschedule = asyncio.Event()
        self.runner = JobRunner(settings, self.bus, on_finish=self._reschedule.set)
        self._triggers: set[str] = set()
        self._decision = Decision()
        self._ready_since: dict[str, float] = {}
        self._models_changed = asyncio.Event()
        self._force_validation: set[str] = set()
        self.models_stats: dict[str, Any] = {"validated": 0, "quarantined": 0, "last_error": None}
        self.control = ControlServer(
            settings.socket_path,
            self,
            self.bus,
            self.metrics,
            settings.control.metrics_address,
        )
        self._stop = asyncio.Event()
        self._ready = False
        self._ready_event = asyncio.Event()
        self._rescan = asyncio.Event()
        self._observer_restart = asyncio.Event()
        self._recent: deque[tuple[float, str, int]] = deque()
        # fsyncs can be slow: the flushers get their own thread, not ingest's.
        self._flush_executor = ThreadPoolExecutor(1, thread_name_prefix="flush")
        self.flushers: list[Flusher] = []
        self._ramdisk_restart = asyncio.Event()

    # -- status ---------------------------------------------------------------------------

    def status(self) -> Status:
        return build_status(
            self._reader.config_counts(),
            self.settings,
            self._reader.reject_counts(),
            config_error=self.config_error,
            config_file=str(self.config_path),
            rates=self._rates(),
            ramdisk=[_ramdisk_status(f) for f in self.flushers],
            scheduling=self._scheduling(),
            daemon={
                "pid": os.getpid(),
                "version": __version__,
                "started_at": self.started_at,
                "ready": self._ready,
                "roots": [str(r) for r in self.settings.watch.roots],
                "slots": [slot.name for slot in self.slots],
                "ingest_errors": self.ingest.errors,
                "last_ingest_error": self.ingest.last_error,
            },
        )

    def _rates(self) -> dict[str, float]:
        horizon = time.time() - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        rates: dict[str, float] = {}
        for _, config, n in self._recent:
            rates[config] = rates.get(config, 0.0) + n / RATE_WINDOW_S
        return rates

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        # A file size limit must fail the write (EFBIG, reported), not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        await self.control.start()
        log.info(
            "started",
            version=__version__,
            config=str(self.config_path),
            socket=str(self.settings.socket_path),
            roots=[str(r) for r in self.settings.watch.roots],
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._observe())
                tg.create_task(self._reconcile())
                tg.create_task(self._watch_config())
                tg.create_task(self._watchdog())
                tg.create_task(self._follow_events())
                tg.create_task(self._ramdisk())
                tg.create_task(self._schedule())
                tg.create_task(self._registry())
                await self._stop.wait()
                raise _Shutdown
        except* _Shutdown:
            pass
        finally:
            log.info("stopping")
            self.notifier.stopping()
            await asyncio.gather(self.runner.stop_all(), self._final_flush())
            self.bus.close()
            await self.control.stop()
            await self.ingest.close()
            await self.runner.close()
            self._reader.close()
            self.notifier.close()
        log.info("stopped")
        return 0

    # -- stages ---------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        await self._scan_roots("start")
        # Jobs a dead daemon left running are recorded interrupted, and the first
        # decision is made, before READY: status is whole from the first answer.
        await self.runner.recover()
        await self._schedule_once()
        self._ready = True
        self._ready_event.set()
        status = self.status()
        self.notifier.ready(status_line(status))
        log.info("ready", games=status.total_games, new_games=status.new_games)
        while True:
            try:
                await asyncio.wait_for(self._rescan.wait(), self.settings.watch.rescan_interval_s)
                reason = "requested"
            except TimeoutError:
                reason = "periodic"
            self._rescan.clear()
            await self._scan_roots(reason)

    async def _scan_roots(self, reason: str) -> None:
        await self.ingest.scan(
            self.settings.watch.roots, self.settings.watch.max_line_bytes, reason
        )

    async def _observe(self) -> None:
        """watchfiles over the roots that exist; restarts on errors, reloads, new roots."""
        backoff = 1.0
        while True:
            self._observer_restart = restart = asyncio.Event()
            watch = self.settings.watch
            present = [r for r in watch.roots if r.is_dir()]
            missing = [r for r in watch.roots if not r.is_dir()]
            waiter = (
                asyncio.create_task(self._wait_for_roots(missing, restart)) if missing else None
            )
            try:
                if not present:
                    await restart.wait()
                    continue
                established = False
                async for changes in watchfiles.awatch(
                    *present,
                    watch_filter=_game_or_new_entry,
                    debounce=watch.debounce_ms,
                    # Short steps: a change is seen within ~10 ms, and a batch is
                    # yielded once quiet or debounce_ms after its first change.
                    step=min(10, max(1, watch.debounce_ms)),
                    stop_event=restart,
                    force_polling=watch.force_polling or None,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                    ignore_permission_denied=True,
                ):
                    if not established:
                        # The first yield proves the watches exist; what was written
                        # before they did raised no event, so reconcile once now.
                        established = True
                        self._rescan.set()
                    if changes:
                        await self._on_changes(changes)
                backoff = 1.0
            except Exception as e:
                log.error(
                    "observer failed; restarting it and rescanning",
                    error=repr(e),
                    retry_in_s=backoff,
                )
                self.bus.publish("observer_error", error=repr(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, OBSERVER_BACKOFF_MAX_S)
                self._rescan.set()
            finally:
                if waiter is not None:
                    waiter.cancel()

    async def _wait_for_roots(self, missing: list[Path], restart: asyncio.Event) -> None:
        log.warning("waiting for watched roots to appear", roots=[str(r) for r in missing])
        while not any(r.is_dir() for r in missing):
            await asyncio.sleep(ROOT_POLL_S)
        log.info("watched root appeared", roots=[str(r) for r in missing if r.is_dir()])
        restart.set()

    async def _on_changes(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        files: set[str] = set()
        directories: list[str] = []
        for change, path in changes:
            if path.endswith(SUFFIX):
                if change is not watchfiles.Change.deleted:
                    files.add(path)
            elif change is watchfiles.Change.added and os.path.isdir(path):
                directories.append(path)
        max_line = self.settings.watch.max_line_bytes
        if directories:
            # Files written into a new directory before its watch existed raise no
            # event: scan the directory itself.
            await self.ingest.scan(directories, max_line, "new directory")
        if files:
            await self.ingest.index(files, max_line)

    async def _watch_config(self) -> None:
        """Reload when the config file changes, including editors that save by rename."""
        name = self.config_path.name
        while True:
            try:
                async for _ in watchfiles.awatch(
                    self.config_path.parent,
                    watch_filter=lambda _change, path: os.path.basename(path) == name,
                    debounce=200,
                    recursive=False,
                    rust_timeout=1000,
                ):
                    await self.reload("file changed")
            except Exception as e:
                log.error("cannot watch the config file; SIGHUP still reloads", error=repr(e))
                await asyncio.sleep(5.0)

    async def reload(self, reason: str) -> None:
        """Apply a valid edit of the config file; refuse an invalid one whole."""
        self.notifier.reloading()
        try:
            new = load_settings(self.config_path)
            _check_restart_keys(self.settings, new)
        except ConfigError as e:
            self.config_error = str(e)
            log.error(
                "config refused; the last good configuration stays", reason=reason, errors=e.errors
            )
            self.bus.publish("config_refused", errors=e.errors)
            self.notifier.ready(status_line(self.status()))
            return
        old, self.settings = self.settings, new
        self.config_error = None
        if old.watch != new.watch:
            self._observer_restart.set()
            self._rescan.set()
        if old.ramdisk != new.ramdisk:
            self._ramdisk_restart.set()
        self._reschedule.set()
        log.info("config reloaded", reason=reason)
        self.bus.publish("config_reloaded", reason=reason)
        self.notifier.ready(status_line(self.status()))

    async def _ramdisk(self) -> None:
        """One flusher per mapping; all restarted when a reload changes the mappings."""
        while True:
            self._ramdisk_restart = restart = asyncio.Event()
            self.flushers = [Flusher(m) for m in self.settings.ramdisk]
            tasks = [asyncio.create_task(self._run_flusher(f, restart)) for f in self.flushers]
            try:
                await restart.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_flusher(self, flusher: Flusher, restart: asyncio.Event) -> None:
        mapping = flusher.mapping
        loop = asyncio.get_running_loop()
        while not restart.is_set():
            await loop.run_in_executor(self._flush_executor, flusher.sweep)
            self._report_flushes(flusher)
            if not flusher.status.source_present:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(restart.wait(), mapping.sweep_interval_s)
                continue
            try:
                async for changes in watchfiles.awatch(
                    mapping.source,
                    watch_filter=lambda _c, path: path.endswith(SUFFIX),
                    debounce=mapping.flush_interval_ms,
                    step=min(10, mapping.flush_interval_ms),
                    stop_event=restart,
                    rust_timeout=int(mapping.sweep_interval_s * 1000),
                    yield_on_timeout=True,
                    ignore_permission_denied=True,
                ):
                    # A quiet interval (an empty batch) is the time for a sweep.
                    if changes:
                        paths = [path for _, path in changes]
                        await loop.run_in_executor(self._flush_executor, flusher.flush, paths)
                    else:
                        await loop.run_in_executor(self._flush_executor, flusher.sweep)
                    self._report_flushes(flusher)
                    if not os.path.isdir(mapping.source):
                        break  # wiped (reboot): sweep reports it, then wait for it
            except Exception as e:
                log.error(
                    "ramdisk watch failed; sweeping instead",
                    source=str(mapping.source),
                    error=repr(e),
                )
                await asyncio.sleep(mapping.sweep_interval_s)

    def _report_flushes(self, flusher: Flusher) -> None:
        for source, target, end, at in flusher.drain_flushed():
            self.bus.publish(
                "ramdisk_flushed", source=source, target=target, end=end, fsynced_at=at
            )
        for path, error in flusher.drain_transitions():
            if error is None:
                log.info("ramdisk flush recovered", source=path)
                self.bus.publish("ramdisk_recovered", source=path)
            else:
                log.error("ramdisk flush failed; retrying with backoff", source=path, error=error)
                self.bus.publish("ramdisk_error", source=path, error=error)

    async def _final_flush(self) -> None:
        """Flush every complete line before exit, telling systemd if it takes a while."""
        if not self.flushers:
            return
        loop = asyncio.get_running_loop()

        def flush_all() -> None:
            for flusher in self.flushers:
                flusher.sweep(force=True)

        work = loop.run_in_executor(self._flush_executor, flush_all)
        while True:
            self.notifier.extend_timeout(FINAL_FLUSH_EXTEND_S)
            done, _ = await asyncio.wait({work}, timeout=FINAL_FLUSH_EXTEND_S / 2)
            if done:
                break
        await work
        for flusher in self.flushers:
            self._report_flushes(flusher)
            log.info(
                "final ramdisk flush",
                source=flusher.source,
                flushed_games=flusher.status.flushed_games,
            )
        self._flush_executor.shutdown(wait=True)

    # -- scheduling -------------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Decide and start jobs: on new games, job ends, operator actions, and every second."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reschedule.wait(), SCHEDULE_EVERY_S)
            self._reschedule.clear()
            if self._ready:
                await self._schedule_once()

    async def _schedule_once(self) -> None:
        training = self.settings.training
        policy = Policy(
            enabled=training.enabled,
            min_interval_s=training.min_interval_s,
            backoff_base_s=training.backoff_base_s,
            backoff_cap_s=training.backoff_cap_s,
        )
        now = time.time()
        decision = decide(self._views(), self._running(), [s.name for s in self.slots], policy, now)
        self._decision = decision
        for job_id in decision.cancel:
            self.runner.cancel(job_id, "its configuration was removed")
        slots = {slot.name: slot for slot in self.slots}
        for config, slot_name in decision.start:
            triggered = config in self._triggers
            self._triggers.discard(config)
            job = await self.runner.start(config, slots[slot_name], triggered)
            if job is not None:
                self.metrics.queue_wait.observe(now - self._ready_since.pop(config, now))
        for config, state in decision.states.items():
            if state == "ready":
                self._ready_since.setdefault(config, now)

    def _views(self) -> list[ConfigView]:
        counts = {c.name: c for c in self._reader.config_counts()}
        paused = self._reader.paused()
        history = self._reader.job_history()
        views = []
        for name in sorted(set(counts) | set(self.settings.configs)):
            h = history.get(name)
            views.append(
                ConfigView(
                    name,
                    counts[name].new if name in counts else 0,
                    self.settings.threshold(name),
                    paused=name in paused,
                    triggered=name in self._triggers,
                    last_start=h.last_start if h else None,
                    last_success=h.last_success if h else None,
                    failures=h.failures if h else 0,
                    last_failure=h.last_failure if h else None,
                )
            )
        return views

    def _running(self) -> list[RunningJob]:
        return [
            RunningJob(j.job.id, j.job.config, j.slot.name) for j in self.runner.running.values()
        ]

    def _scheduling(self) -> dict[str, Scheduling]:
        history = self._reader.job_history()
        running = {j.job.config: j for j in self.runner.running.values()}
        out = {}
        for config, state in self._decision.states.items():
            job = running.get(config)
            h = history.get(config)
            out[config] = Scheduling(
                state="training" if job else state,
                job=_job_progress(job) if job else None,
                backoff_until=self._decision.backoff_until.get(config),
                last_error=h.last_error if h and h.failures else None,
            )
        for config, job in running.items():
            out.setdefault(config, Scheduling("training", _job_progress(job)))
        return out

    # -- checkpoint registry ----------------------------------------------------------------

    async def _registry(self) -> None:
        """After READY (start-up is stat only): validate new checkpoints in the background."""
        await self._ready_event.wait()
        while True:
            try:
                await self._refresh_models()
            except registry.ValidatorFailed as e:
                self.models_stats["last_error"] = str(e)
                log.error("checkpoint validation failed; retrying later", error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._models_changed.wait(), MODELS_RESCAN_S)
            self._models_changed.clear()

    async def _refresh_models(self) -> None:
        models = self.settings.models
        force, self._force_validation = self._force_validation, set()
        pending = await self.runner.db(lambda db: registry.refresh(db, models.dirs, force))
        if pending:
            verdicts = await registry.validate(pending, models.validate_concurrency)
            bad = await self.runner.db(lambda db: registry.record(db, verdicts))
            self.models_stats["validated"] += len(verdicts)
            self.models_stats["quarantined"] += len(bad)
            self.models_stats["last_error"] = None
            for path, reason in bad:
                log.error("checkpoint failed validation; quarantined", file=path, reason=reason)
                self.bus.publish("checkpoint_bad", path=path, reason=reason)
            for v in verdicts:
                if v["ok"]:
                    self.bus.publish("checkpoint_validated", path=v["path"], config=v.get("config"))
        rows = await self.runner.db(lambda db: db.checkpoints())
        registry.point_latest(self.settings.state_dir / "models", registry.latest(rows))
        if models.retention == "delete_old":
            for path in await self.runner.db(lambda db: registry.prune(db, models.keep)):
                log.info("old checkpoint removed (models.retention: delete_old)", file=path)

    async def models(self) -> dict[str, Any]:
        rows = await self.runner.db(lambda db: db.checkpoints())
        return {**registry.summary(rows), "stats": self.models_stats}

    async def validate_models(self, path: str | None) -> str:
        if path is not None:
            known = await self.runner.db(lambda db: db.checkpoints())
            if os.path.abspath(path) not in known:
                raise OperatorError(
                    404, f"{path} is not a registered checkpoint (see `ringd models`)"
                )
            self._force_validation.add(os.path.abspath(path))
        else:
            self._force_validation.add("*")
        self._models_changed.set()
        return f"validating {path or 'every checkpoint'} again in the background"

    async def pin_model(self, path: str, pinned: bool) -> str:
        absolute = os.path.abspath(path)
        if not await self.runner.db(lambda db: db.set_checkpoint_flags(absolute, pinned=pinned)):
            raise OperatorError(404, f"{path} is not a registered checkpoint (see `ringd models`)")
        return f"{absolute} {'pinned: never removed by retention' if pinned else 'unpinned'}"

    # -- operator actions (control socket) ------------------------------------------------

    async def jobs(self) -> list[dict[str, Any]]:
        rows = await self.runner.jobs()
        live = {job_id: j.progress for job_id, j in self.runner.running.items()}
        return [{**dataclasses.asdict(r), "progress": live.get(r.id, r.progress)} for r in rows]

    def job_log(self, job_id: str) -> Path:
        path = self.settings.state_dir / "jobs" / job_id / "job.log"
        if "/" in job_id or job_id.startswith(".") or not path.is_file():
            raise OperatorError(404, f"no job {job_id!r} (see `ringd jobs`)")
        return path

    async def trigger(self, config: str) -> str:
        view = next((v for v in self._views() if v.name == config), None)
        if view is None or view.threshold is None:
            raise OperatorError(
                404, f"{config} is not a configured configuration (see `ringd status`)"
            )
        if view.paused:
            raise OperatorError(409, f"{config} is paused: `ringd resume {config}` first")
        if not self.settings.training.enabled:
            raise OperatorError(409, "training is disabled (training.enabled: false)")
        if view.new_games == 0:
            raise OperatorError(409, f"{config} has no new games to train on")
        if any(j.job.config == config for j in self.runner.running.values()):
            raise OperatorError(409, f"{config} is training already")
        self._triggers.add(config)
        self._reschedule.set()
        log.info("training triggered by an operator", config=config, new_games=view.new_games)
        return f"{config}: training starts as soon as a slot is free ({view.new_games} new games)"

    async def pause(self, config: str, paused: bool) -> str:
        if split_config_name(config) is None:
            raise OperatorError(400, f"{config!r} is not a configuration name ({{board}}_{{n}}p)")
        await self.runner.set_paused(config, paused)
        self._triggers.discard(config)
        self._reschedule.set()
        log.info("paused" if paused else "resumed", config=config)
        if paused:
            running = any(j.job.config == config for j in self.runner.running.values())
            return f"{config} paused" + ("; its running job finishes first" if running else "")
        return f"{config} resumed"

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _follow_events(self) -> None:
        last_status = 0.0
        async for event in self.bus.follow():
            if event.kind == "job_finished":
                self._models_changed.set()
                config, state = event.data["config"], event.data["state"]
                self.metrics.jobs.labels(config, state).inc()
                self.metrics.training_duration.labels(config, state).observe(event.data["seconds"])
            if event.kind == "games":
                self._reschedule.set()
                self._recent.append((event.at, event.data["config"], event.data["count"]))
                if self._ready and event.at - last_status >= 1.0:
                    last_status = event.at
                    self.notifier.status(status_line(self.status()))


def _job_progress(running: RunningJobHandle) -> JobProgress:
    p = running.progress

    def number(key: str) -> Any:
        value = p.get(key)
        return value if isinstance(value, int | float) else None

    return JobProgress(
        id=running.job.id,
        slot=running.slot.name,
        started_at=running.started,
        first_seq=running.job.first_seq,
        last_seq=running.job.last_seq,
        games=running.job.games,
        step=number("step"),
        total_steps=number("total_steps"),
        loss=number("loss"),
        samples_per_s=number("samples_per_s"),
        eta_s=number("eta_s"),
    )


def _ramdisk_status(flusher: Flusher) -> RamdiskStatus:
    s = flusher.status
    return RamdiskStatus(
        source=s.source,
        target=s.target,
        source_present=s.source_present,
        files=s.files,
        pending_bytes=s.pending_bytes,
        pending_games=s.pending_games,
        partial_bytes=s.partial_bytes,
        flushed_games=s.flushed_games,
        flushed_bytes=s.flushed_bytes,
        last_flush_at=s.last_flush_at,
        oldest_pending_age_s=flusher.oldest_pending_age_s,
        deleted_sources=s.deleted_sources,
        errors=s.errors,
        last_error=s.last_error,
        failing=dict(s.failing),
    )


def _game_or_new_entry(change: watchfiles.Change, path: str) -> bool:
    # New directories matter too: they are scanned at once.
    return path.endswith(SUFFIX) or change is watchfiles.Change.added


def _check_restart_keys(old: Settings, new: Settings) -> None:
    changed = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    if changed:
        raise ConfigError(
            [
                f"{k}: cannot change while ringd runs; restart it (systemctl restart ringd)"
                for k in changed
            ]
        )


def run(config_path: Path, settings: Settings) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    import uvloop

    return uvloop.run(Daemon(config_path, settings).run())
