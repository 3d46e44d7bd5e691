"""The RAM-disk stage: one flusher per mapping, driven by watch events and sweeps.

The copying itself (complete lines only, fsync, targets as cursors) lives in
`ringd.ramdisk`; this stage decides when it runs: on changes in a source tree,
on a sweep every `sweep_interval_s`, and a final flush of everything at
shutdown. fsyncs can be slow, so the flushers get a thread of their own.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog
import watchfiles

from ringd.ramdisk import Flusher
from ringd.scan import SUFFIX
from ringd.service.events import EventBus, RamdiskFailed, RamdiskFlushed, RamdiskRecovered
from ringd.service.notify import Notifier
from ringd.service.waiting import wait_event
from ringd.settings import RamdiskMapping
from ringd.status import RamdiskStatus

T = TypeVar("T")
log = structlog.get_logger("ringd.ramdisk")
FINAL_FLUSH_EXTEND_S = 20.0


class GameFiles:
    """A watchfiles filter: changes to `*.jsonl` files only."""

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return path.endswith(SUFFIX)


class RamdiskStage:
    def __init__(self, mappings: list[RamdiskMapping], bus: EventBus) -> None:
        self.mappings = mappings
        self.flushers: list[Flusher] = []
        self._bus = bus
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flush")
        self._restart = asyncio.Event()

    def reconfigure(self, mappings: list[RamdiskMapping]) -> None:
        """A reload changed `ramdisk:`: restart every flusher on the new mappings."""
        if mappings != self.mappings:
            self.mappings = mappings
            self._restart.set()

    def status(self) -> list[RamdiskStatus]:
        return [_status(f) for f in self.flushers]

    async def run(self) -> None:
        while True:
            self._restart = restart = asyncio.Event()
            self.flushers = [Flusher(m) for m in self.mappings]
            tasks = [asyncio.create_task(self._run_one(f, restart)) for f in self.flushers]
            try:
                await restart.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run_one(self, flusher: Flusher, restart: asyncio.Event) -> None:
        mapping = flusher.mapping
        while not restart.is_set():
            await self._in_thread(flusher.sweep)
            self._report(flusher)
            if not flusher.status.source_present:
                await wait_event(restart, mapping.sweep_interval_s)
                continue
            try:
                async for changes in watchfiles.awatch(
                    mapping.source,
                    watch_filter=GameFiles(),
                    debounce=mapping.flush_interval_ms,
                    step=min(10, mapping.flush_interval_ms),
                    stop_event=restart,
                    rust_timeout=int(mapping.sweep_interval_s * 1000),
                    yield_on_timeout=True,
                    ignore_permission_denied=True,
                ):
                    # A quiet interval (an empty batch) is the time for a sweep.
                    paths = [path for _, path in changes]
                    if paths:
                        await self._in_thread(functools.partial(flusher.flush, paths))
                    else:
                        await self._in_thread(flusher.sweep)
                    self._report(flusher)
                    if not os.path.isdir(mapping.source):
                        break  # wiped (reboot): sweep reports it, then wait for it
            except Exception as e:
                log.error(
                    "ramdisk watch failed; sweeping instead",
                    source=str(mapping.source),
                    error=repr(e),
                )
                await asyncio.sleep(mapping.sweep_interval_s)

    def _report(self, flusher: Flusher) -> None:
        for source, target, end, at in flusher.drain_flushed():
            self._bus.publish(RamdiskFlushed(source, target, end, at))
        for path, error in flusher.drain_transitions():
            if error is None:
                log.info("ramdisk flush recovered", source=path)
                self._bus.publish(RamdiskRecovered(path))
            else:
                log.error("ramdisk flush failed; retrying with backoff", source=path, error=error)
                self._bus.publish(RamdiskFailed(path, error))

    async def final_flush(self, notifier: Notifier) -> None:
        """Flush every complete line before exit, telling systemd if it takes a while."""
        # A stop right after start can come before run() made its flushers: make them.
        if not self.flushers:
            self.flushers = [Flusher(m) for m in self.mappings]
        if self.flushers:

            def flush_all() -> None:
                for flusher in self.flushers:
                    flusher.sweep(force=True)

            work = asyncio.ensure_future(self._in_thread(flush_all))
            while not work.done():
                notifier.extend_timeout(FINAL_FLUSH_EXTEND_S)
                await asyncio.wait({work}, timeout=FINAL_FLUSH_EXTEND_S / 2)
            await work
            for flusher in self.flushers:
                self._report(flusher)
                log.info(
                    "final ramdisk flush",
                    source=flusher.source,
                    flushed_games=flusher.status.flushed_games,
                )
        self._executor.shutdown(wait=True)


def _status(flusher: Flusher) -> RamdiskStatus:
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
