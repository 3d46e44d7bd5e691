"""The observer: watchfiles over the watched roots, turned into work for ingest.

Events are hints, never the truth: a new `*.jsonl` or a grown one is indexed at
once, a new directory is scanned (files written into it before its watch
existed raise no event), and once the watches exist ingest reconciles. The
observer restarts with backoff when watchfiles fails, waits for roots that do
not exist yet, and restarts when a reload changes `watch:`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog
import watchfiles

from ringd.scan import SUFFIX
from ringd.service.events import EventBus, ObserverFailed
from ringd.service.ingest import Ingest
from ringd.settings import WatchSettings

log = structlog.get_logger("ringd.observer")
ROOT_POLL_S = 1.0
BACKOFF_MAX_S = 30.0


class GameFilesAndNewDirectories:
    """A watchfiles filter: changes to `*.jsonl` files, and any entry that appears.

    New directories matter as much as files: they are scanned at once.
    """

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return path.endswith(SUFFIX) or change is watchfiles.Change.added


class Observer:
    def __init__(self, watch: WatchSettings, ingest: Ingest, bus: EventBus) -> None:
        self.watch = watch
        self._ingest = ingest
        self._bus = bus
        self._restart = asyncio.Event()

    def reconfigure(self, watch: WatchSettings) -> None:
        """A reload changed `watch:`: watch the new roots."""
        if watch != self.watch:
            self.watch = watch
            self._restart.set()

    async def run(self) -> None:
        backoff = 1.0
        while True:
            self._restart = restart = asyncio.Event()
            watch = self.watch
            present = [r for r in watch.roots if r.is_dir()]
            missing = [r for r in watch.roots if not r.is_dir()]
            waiter = asyncio.create_task(_wait_for_roots(missing, restart)) if missing else None
            try:
                if present:
                    await self._watch(present, watch, restart)
                else:
                    await restart.wait()
                backoff = 1.0
            except Exception as e:
                log.error(
                    "observer failed; restarting it and rescanning",
                    error=repr(e),
                    retry_in_s=backoff,
                )
                self._bus.publish(ObserverFailed(repr(e)))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._ingest.request_scan()
            finally:
                if waiter is not None:
                    waiter.cancel()

    async def _watch(self, roots: list[Path], watch: WatchSettings, stop: asyncio.Event) -> None:
        established = False
        async for changes in watchfiles.awatch(
            *roots,
            watch_filter=GameFilesAndNewDirectories(),
            debounce=watch.debounce_ms,
            # Short steps: a change is seen within ~10 ms, and a batch is yielded
            # once quiet or debounce_ms after its first change.
            step=min(10, max(1, watch.debounce_ms)),
            stop_event=stop,
            force_polling=watch.force_polling or None,
            rust_timeout=1000,
            yield_on_timeout=True,
            ignore_permission_denied=True,
        ):
            if not established:
                # The first yield proves the watches exist; what was written before
                # they did raised no event, so reconcile once now.
                established = True
                self._ingest.request_scan()
            if changes:
                await self._on_changes(changes)

    async def _on_changes(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        files: set[str] = set()
        directories: list[str] = []
        for change, path in changes:
            if path.endswith(SUFFIX):
                if change is not watchfiles.Change.deleted:
                    files.add(path)
            elif change is watchfiles.Change.added and os.path.isdir(path):
                directories.append(path)
        if directories:
            await self._ingest.scan(directories, "new directory")
        if files:
            await self._ingest.index(files)


async def _wait_for_roots(missing: list[Path], restart: asyncio.Event) -> None:
    log.warning("waiting for watched roots to appear", roots=[str(r) for r in missing])
    while not any(r.is_dir() for r in missing):
        await asyncio.sleep(ROOT_POLL_S)
    log.info("watched root appeared", roots=[str(r) for r in missing if r.is_dir()])
    restart.set()
