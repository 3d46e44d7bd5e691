"""The publish stage: each new validated `latest` copied to every `models.publish` destination.

One task per destination. It compares, per configuration, the registry's
latest checkpoint with what it last published there, and copies what is
missing: at start, whenever the registry moves a `latest` (LatestChanged),
when an operator asks (`ringd publish CONFIG`, which copies again even if the
destination should have it, and cuts a backoff short), every minute, and
after a failure when its backoff is over (doubling up to `backoff_cap_s`).
How a copy stays atomic at the destination is in `ringd.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from ringd import publish, rsync
from ringd.ledger import CheckpointRow
from ringd.retry import Health
from ringd.service.errors import OperatorError
from ringd.service.events import EventBus, LatestChanged, ModelPublished, PublishFailed
from ringd.service.metrics import Metrics
from ringd.service.rsync_process import TransferFailed, check, run_rsync, transport
from ringd.settings import ModelsSettings, PublishDestination, Settings
from ringd.status import PublishStatus

log = structlog.get_logger("ringd.publish")
RESCAN_S = 60.0
# Failures back off from this, doubling up to the destination's backoff_cap_s.
BACKOFF_BASE_S = 5.0

Latest = Callable[[], Mapping[str, CheckpointRow]]


def name_of(row: CheckpointRow) -> str:
    return publish.published_name(row.path, row.job_id, row.sha256)


class Destination:
    def __init__(
        self,
        dest: PublishDestination,
        models: ModelsSettings,
        work: Path,
        latest: Latest,
        bus: EventBus,
        metrics: Metrics,
    ) -> None:
        self.dest = dest
        self.models = models  # keep and retention; a reload replaces it
        self.label = rsync.redact(dest.dest)
        key = publish.destination_key(dest.dest)
        self._work = work / key
        self._history_path = work / f"{key}.json"
        self._latest = latest
        self._bus = bus
        self._metrics = metrics
        self._transport = transport(
            dest.dest, dest.ssh, dest.password_file, dest.bwlimit, dest.timeout_s
        )
        self.history: dict[str, list[str]] = {}
        self.health = Health()
        self.busy = False
        self._forced: set[str] = set()
        self._wake = asyncio.Event()

    def ask(self, config: str | None = None) -> None:
        """Look again now; with `config`, copy its latest even if it should be there."""
        if config is not None:
            self._forced.add(config)
        self._wake.set()

    def pending(self) -> list[str]:
        latest = self._latest()
        return sorted(
            config
            for config, row in latest.items()
            if config in self._forced or self.published(config) != name_of(row)
        )

    def published(self, config: str) -> str | None:
        names = self.history.get(config)
        return names[-1] if names else None

    async def run(self) -> None:
        self.history = await asyncio.to_thread(publish.load_history, self._history_path)
        while True:
            self._wake.clear()
            todo = self.pending()
            wait = RESCAN_S
            if todo:
                backoff = (self.health.next_try_at or 0.0) - time.time()
                if backoff <= 0 or self._forced & set(todo):
                    await self._publish_all(todo)
                    continue
                wait = backoff
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _publish_all(self, todo: list[str]) -> None:
        latest = self._latest()
        for config in todo:
            row = latest.get(config)
            if row is None:
                self._forced.discard(config)
                continue
            self.busy = True
            self.health = self.health.started(time.time())
            name = name_of(row)
            try:
                async with asyncio.timeout(self.dest.timeout_s):
                    await self._publish(config, row, name)
            except (TransferFailed, TimeoutError, OSError) as e:
                self._failed(config, e)
                return
            except Exception as e:  # a bug must not stop the other stages: reported, retried
                log.exception("publish crashed", dest=self.label, config=config)
                self._failed(config, e)
                return
            finally:
                self.busy = False
            self._forced.discard(config)
            self.health = self.health.succeeded(time.time())
            self._metrics.publishes.labels(self.label, "ok").inc()
            self._bus.publish(ModelPublished(self.label, config, name))
            log.info("model published", dest=self.label, config=config, name=name)
            await self._prune(config)

    async def _publish(self, config: str, row: CheckpointRow, name: str) -> None:
        t, work, timeout = self._transport, self._work, self.dest.timeout_s
        await asyncio.to_thread(publish.stage_upload, work / "upload", config, Path(row.path), name)
        check(await run_rsync(rsync.upload_argv(t, str(work / "upload")), timeout))
        # Only now that the checkpoint and its sidecar are there does latest.pt move.
        await asyncio.to_thread(publish.stage_pointer, work / "pointer", config, name)
        check(await run_rsync(rsync.pointer_argv(t, str(work / "pointer")), timeout))
        history = {c: list(names) for c, names in self.history.items()}
        publish.record(history, config, name)
        await self._save(history)

    async def _prune(self, config: str) -> None:
        """models.retention: delete_old also keeps only the newest `keep` at each destination."""
        if self.models.retention != "delete_old":
            return
        names = self.history.get(config, [])
        old = publish.to_prune(names, self.models.keep)
        if not old:
            return
        doomed = old + [publish.sidecar_name(n) for n in old]
        empty = self._work / "empty"
        try:
            await asyncio.to_thread(publish.stage_empty, empty)
            argv = rsync.prune_argv(self._transport, str(empty), config, doomed)
            check(await run_rsync(argv, self.dest.timeout_s))
        except (TransferFailed, OSError) as e:
            log.warning(
                "old published models not removed; retried after the next publish",
                dest=self.label,
                config=config,
                error=rsync.redact(str(e)),
            )
            return
        await self._save({**self.history, config: [n for n in names if n not in old]})
        log.info(
            "old published models removed (models.retention: delete_old)",
            dest=self.label,
            config=config,
            files=old,
        )

    async def _save(self, history: dict[str, list[str]]) -> None:
        """Write what is at the destination now, then believe it. A cancellation (a
        reload, shutdown) waits for the write: a thread not yet started would be
        dropped, and a successor would copy again and never prune what it forgot."""
        save = asyncio.ensure_future(
            asyncio.to_thread(publish.save_history, self._history_path, self.label, history)
        )
        try:
            await asyncio.shield(save)
        except asyncio.CancelledError:
            await save
            raise
        self.history = history

    def _failed(self, config: str, e: Exception) -> None:
        if isinstance(e, TimeoutError):
            message = f"copy took longer than timeout_s ({self.dest.timeout_s:g} s)"
        else:
            message = rsync.redact(str(e) or repr(e))
        unreachable = isinstance(e, TransferFailed) and e.unreachable
        self.health = self.health.failed(
            time.time(),
            message,
            unreachable=unreachable,
            base_s=BACKOFF_BASE_S,
            cap_s=self.dest.backoff_cap_s,
        )
        self._metrics.publishes.labels(self.label, "failed").inc()
        self._bus.publish(PublishFailed(self.label, config, message))
        log.warning(
            "publish failed; retrying with backoff",
            dest=self.label,
            config=config,
            error=message,
            unreachable=unreachable,
        )

    def status(self) -> PublishStatus:
        h = self.health
        state = h.state(self.busy)
        return PublishStatus(
            dest=self.label,
            state="publishing" if state == "busy" else state,
            last_success_at=h.last_success_at,
            last_attempt_at=h.last_attempt_at,
            published={c: names[-1] for c, names in sorted(self.history.items()) if names},
            pending=self.pending(),
            failures=h.failures,
            error=h.error,
            next_try_at=h.next_try_at,
        )


class Publisher:
    """Every destination's task, restarted when a reload changes `models.publish`."""

    def __init__(self, settings: Settings, latest: Latest, bus: EventBus, metrics: Metrics) -> None:
        self._settings = settings
        self._latest = latest
        self._bus = bus
        self._metrics = metrics
        self._work = settings.state_dir / "publish"
        self.destinations: list[Destination] = []
        self._changed = asyncio.Event()

    def reconfigure(self, settings: Settings) -> None:
        old, self._settings = self._settings, settings
        for d in self.destinations:
            d.models = settings.models
        if settings.models.publish != old.models.publish:
            self._changed.set()

    async def run(self) -> None:
        follower = asyncio.create_task(self._follow())
        tasks: list[asyncio.Task[None]] = []
        try:
            while True:
                self.destinations = [
                    Destination(
                        d, self._settings.models, self._work, self._latest, self._bus, self._metrics
                    )
                    for d in self._settings.models.publish
                ]
                tasks = [asyncio.create_task(d.run()) for d in self.destinations]
                await self._changed.wait()
                self._changed.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            follower.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(follower, *tasks, return_exceptions=True)

    async def _follow(self) -> None:
        async for event in self._bus.follow():
            if isinstance(event, LatestChanged):
                for d in self.destinations:
                    d.ask()

    def status(self) -> list[PublishStatus]:
        return [d.status() for d in self.destinations]

    async def publish(self, config: str) -> str:
        """`ringd publish CONFIG`: copy its latest to every destination now."""
        if not self.destinations:
            raise OperatorError(409, "models.publish lists no destinations")
        row = self._latest().get(config)
        if row is None:
            raise OperatorError(
                404, f"{config} has no validated latest checkpoint (see `ringd models`)"
            )
        for d in self.destinations:
            d.ask(config)
        return (
            f"publishing {config}'s latest ({name_of(row)}) to {len(self.destinations)} "
            "destination(s); `ringd status` shows progress"
        )
