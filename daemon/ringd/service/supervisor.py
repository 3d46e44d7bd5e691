"""The supervisor: the daemon's lifecycle around its stages.

`serve()` = `startup()`, `main_loop()`, `shutdown()` inside `capture_signals()`:
- startup: the control socket, a reconciliation scan, jobs a dead daemon left
  are recorded interrupted, the first scheduling decision, then READY (status
  is whole from the first answer);
- main loop: every stage's own loop in one TaskGroup, plus the config-file
  watch (hot reload), the systemd watchdog and STATUS, until SIGTERM/SIGINT;
- shutdown: STOPPING, running jobs stopped (they save resumable checkpoints)
  beside the final RAM-disk flush, streams ended, ledger closed, socket removed.
A second SIGTERM/SIGINT forces an exit at once; SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import watchfiles

from ringd import __version__
from ringd.ledger import Ledger
from ringd.service.control import ControlServer
from ringd.service.events import ConfigRefused, ConfigReloaded, EventBus, GamesAdded
from ringd.service.flusher import RamdiskStage
from ringd.service.ingest import Ingest
from ringd.service.jobs import JobRunner
from ringd.service.models import ModelRegistry
from ringd.service.notify import Notifier, watchdog_interval
from ringd.service.observer import Observer
from ringd.service.publisher import Publisher
from ringd.service.remotes import Remotes
from ringd.service.scheduler import Scheduler
from ringd.settings import ConfigError, Settings, load_settings
from ringd.status import Status, build_status, status_line

log = structlog.get_logger("ringd")
# Parts of the configuration bound at start: changing them needs a restart.
RESTART_KEYS = ("state_dir", "control")
STATUS_EVERY_S = 1.0
FORCED_EXIT_CODE = 130


@dataclass(frozen=True, slots=True)
class Stages:
    """The running daemon's stages, in the direction the data flows."""

    ingest: Ingest
    observer: Observer
    ramdisk: RamdiskStage
    scheduler: Scheduler
    runner: JobRunner
    models: ModelRegistry
    remotes: Remotes
    publisher: Publisher
    control: ControlServer


class Supervisor:
    def __init__(
        self,
        config_path: Path,
        settings: Settings,
        stages: Stages,
        bus: EventBus,
        reader: Ledger,
        notifier: Notifier,
    ) -> None:
        self.config_path = config_path
        self.settings = settings
        self.stages = stages
        self.bus = bus
        self.notifier = notifier
        self.config_error: str | None = None
        self.started_at = time.time()
        self.ready = asyncio.Event()
        self._reader = reader  # status queries, beside ingest's writer
        self._stop = asyncio.Event()
        # What the settings were read from: an edit changes it.
        self._loaded = _identity(config_path)

    async def serve(self, *, install_signals: bool = True) -> int:
        """Run until `stop()` (or SIGTERM/SIGINT when `install_signals`)."""
        with self.capture_signals() if install_signals else contextlib.nullcontext():
            starting = asyncio.create_task(self.startup())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if starting.done():
                starting.result()  # a failed start-up (socket taken, ...) raises as it is
            else:
                # Stopped during the first scan (a long backfill): what was committed stays.
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            try:
                if not starting.cancelled():
                    await self.main_loop()
            finally:
                await self.shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT stop (a second one forces exit), SIGHUP reloads; restored on exit."""
        loop = asyncio.get_running_loop()

        def on_stop(sig: signal.Signals) -> None:
            if self._stop.is_set():
                log.warning("second signal: exiting at once", signal=sig.name)
                os._exit(FORCED_EXIT_CODE)
            log.info("stop requested", signal=sig.name)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        # A file size limit must fail the write (EFBIG, reported), not kill the daemon.
        previous_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            signal.signal(signal.SIGXFSZ, previous_xfsz)

    async def startup(self) -> None:
        s = self.stages
        await s.control.start(self)
        log.info(
            "started",
            version=__version__,
            config=str(self.config_path),
            socket=str(self.settings.socket_path),
            roots=[str(r) for r in self.settings.watch.roots],
        )
        await s.ingest.scan(self.settings.watch.roots, "start")
        await s.runner.recover()
        await s.runner.measure_samples()
        s.scheduler.check_trainer()  # in the background; no job starts before it passed
        await s.scheduler.schedule_once()
        self.ready.set()
        status = self.status()
        self.notifier.ready(status_line(status))
        log.info("ready", games=status.total_games, new_games=status.new_games)

    async def main_loop(self) -> None:
        s = self.stages

        class _Stopped(Exception):
            pass

        try:
            async with asyncio.TaskGroup() as tg:
                for stage in (
                    s.observer,
                    s.ingest,
                    s.ramdisk,
                    s.remotes,
                    s.scheduler,
                    s.models,
                    s.publisher,
                ):
                    tg.create_task(stage.run())
                tg.create_task(self._watch_config())
                tg.create_task(self._watchdog())
                tg.create_task(self._report_status())
                await self._stop.wait()
                raise _Stopped
        except* _Stopped:
            pass

    async def shutdown(self) -> None:
        s = self.stages
        log.info("stopping")
        self.notifier.stopping()
        await asyncio.gather(s.runner.stop_all(), s.ramdisk.final_flush(self.notifier))
        self.bus.close()
        await s.control.stop()
        await s.ingest.close()
        await s.runner.close()
        await s.models.close()
        self._reader.close()
        self.notifier.close()
        log.info("stopped")

    # -- status -----------------------------------------------------------------------------

    def status(self) -> Status:
        s = self.stages
        status = build_status(
            self._reader.config_counts(),
            self.settings,
            self._reader.reject_counts(),
            config_error=self.config_error,
            config_file=str(self.config_path),
            rates=s.ingest.rates(),
            ramdisk=s.ramdisk.status(),
            scheduling=s.scheduler.scheduling(),
            held_out=s.models.held_out,
            samples_bytes=s.runner.samples_bytes,
            remotes=s.remotes.status(),
            publish=s.publisher.status(),
            daemon={
                "pid": os.getpid(),
                "version": __version__,
                "started_at": self.started_at,
                "ready": self.ready.is_set(),
                "roots": [str(r) for r in self.settings.watch.roots],
                "slots": [slot.name for slot in s.scheduler.slots],
                "ingest_errors": s.ingest.errors,
                "last_ingest_error": s.ingest.last_error,
            },
        )
        status.trainer_unavailable = s.scheduler.trainer_error
        status.unreadable = s.ingest.unreadable()
        return status

    async def _report_status(self) -> None:
        """systemd's STATUS line follows new games, at most once a second."""
        last = 0.0
        async for event in self.bus.follow():
            if isinstance(event, GamesAdded) and event.at - last >= STATUS_EVERY_S:
                last = event.at
                self.notifier.status(status_line(self.status()))

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- reload ---------------------------------------------------------------------------

    async def _watch_config(self) -> None:
        """Reload when the config file changes, including editors that save by rename."""
        name = self.config_path.name
        while True:
            try:
                async for changes in watchfiles.awatch(
                    self.config_path.parent,
                    watch_filter=lambda _change, path: os.path.basename(path) == name,
                    debounce=200,
                    recursive=False,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                ):
                    # A quiet second (no changes) compares the file with what was
                    # loaded: an edit made before the watch existed is applied too.
                    if changes or _identity(self.config_path) != self._loaded:
                        await self.reload("file changed")
            except Exception as e:
                log.error("cannot watch the config file; SIGHUP still reloads", error=repr(e))
                await asyncio.sleep(5.0)

    async def reload(self, reason: str) -> None:
        """Apply a valid edit of the config file; refuse an invalid one whole."""
        self.notifier.reloading()
        self._loaded = _identity(self.config_path)
        try:
            new = load_settings(self.config_path)
            _check_restart_keys(self.settings, new)
        except ConfigError as e:
            self.config_error = str(e)
            log.error(
                "config refused; the last good configuration stays", reason=reason, errors=e.errors
            )
            self.bus.publish(ConfigRefused(e.errors))
            self.notifier.ready(status_line(self.status()))
            return
        self.settings = new
        self.config_error = None
        s = self.stages
        s.ingest.reconfigure(new.watch, new.rules)
        s.observer.reconfigure(new.watch)
        s.ramdisk.reconfigure(new.ramdisk)
        s.models.settings = new
        s.remotes.reconfigure(new)
        s.publisher.reconfigure(new)
        s.scheduler.reconfigure(new)
        log.info("config reloaded", reason=reason)
        self.bus.publish(ConfigReloaded(reason))
        self.notifier.ready(status_line(self.status()))

    # -- operator actions, for the control socket ------------------------------------------

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.stages.runner.listing()

    def job_log(self, job_id: str) -> Path:
        return self.stages.runner.log_path(job_id)

    async def trigger(self, config: str) -> str:
        return await self.stages.scheduler.trigger(config)

    async def pause(self, config: str, paused: bool) -> str:
        return await self.stages.scheduler.pause(config, paused)

    async def models(self) -> dict[str, Any]:
        return await self.stages.models.summary()

    async def validate_models(self, path: str | None) -> str:
        return await self.stages.models.validate(path)

    async def pin_model(self, path: str, pinned: bool) -> str:
        return await self.stages.models.pin(path, pinned)

    async def promote_model(self, path: str) -> str:
        return await self.stages.models.promote_by_hand(path)

    async def pull(self, remote: str) -> str:
        return await self.stages.remotes.pull(remote)

    async def publish(self, config: str) -> str:
        return await self.stages.publisher.publish(config)


def _check_restart_keys(old: Settings, new: Settings) -> None:
    changed = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    if changed:
        raise ConfigError(
            [
                f"{k}: cannot change while ringd runs; restart it (systemctl restart ringd)"
                for k in changed
            ]
        )


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
