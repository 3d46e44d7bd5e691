"""The ingest stage: reconciliation scans and indexing, off the event loop.

All ledger writes go through one worker thread, so commits are serialised and
the event loop stays free to answer the control socket during a long backfill.
The stage owns the reconciliation loop (a scan every `rescan_interval_s` and
whenever one is requested) and publishes what it committed: games per config
with their sequence ranges, newly discovered files, rejects.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from ringd.cursor import FileChange, FileResult, index_file
from ringd.ledger import Added, Ledger
from ringd.records import Rules
from ringd.scan import ScanReport, scan
from ringd.service.events import (
    EventBus,
    FileFound,
    GamesAdded,
    IngestFailed,
    Rejected,
    ScanFinished,
)
from ringd.service.metrics import Metrics
from ringd.service.waiting import wait_event
from ringd.settings import WatchSettings
from ringd.status import Unreadable, unreadable_problem

T = TypeVar("T")
log = structlog.get_logger("ringd.ingest")
RATE_WINDOW_S = 60.0
RELEASE_AFTER_GAMES = 10_000  # a scan that read this many gives back its page cache


class Ingest:
    def __init__(
        self,
        ledger_path: Path,
        watch: WatchSettings,
        bus: EventBus,
        metrics: Metrics,
        rules: Rules,
    ) -> None:
        self.watch = watch
        self.rules = rules  # how lines become games (aliases, statuses, line limit)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        # The one writer of games: a page cache that holds what a commit dirties.
        self._ledger = Ledger(ledger_path, writer=True)
        self._bus = bus
        self._metrics = metrics
        self._stop = threading.Event()
        self._rescan = asyncio.Event()
        self._recent: deque[tuple[float, str, int]] = deque()
        # Ledger writes that failed (disk full, I/O error): nothing was committed,
        # so the same games are read again by the next scan.
        self.errors = 0
        self.last_error: str | None = None
        # Files and directories below the roots that cannot be read, {path: reason}:
        # each scan replaces what it covers, a watch event's read adds or clears its file.
        self._unreadable: dict[str, str] = {}

    def reconfigure(self, watch: WatchSettings, rules: Rules) -> None:
        """A reload changed `watch:` or `records:`: rescan at once (new roots, new
        aliases are folded in)."""
        if watch != self.watch or rules != self.rules:
            self.watch, self.rules = watch, rules
            self._rescan.set()

    def request_scan(self) -> None:
        """Reconcile soon (the observer's watches were (re)established, or it failed)."""
        self._rescan.set()

    async def run(self) -> None:
        """Reconcile every `rescan_interval_s`, and whenever a scan is requested."""
        while True:
            asked = await wait_event(self._rescan, self.watch.rescan_interval_s)
            reason = "requested" if asked else "periodic"
            self._rescan.clear()
            await self.scan(self.watch.roots, reason)

    def rates(self) -> dict[str, float]:
        """Games per second per config over the last minute."""
        horizon = time.time() - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        rates: dict[str, float] = {}
        for _, config, n in self._recent:
            rates[config] = rates.get(config, 0.0) + n / RATE_WINDOW_S
        return rates

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def scan(self, roots: Sequence[Path | str], reason: str) -> ScanReport:
        """A reconciliation scan of `roots` (or of a directory that just appeared)."""
        rules = self.rules
        # A directory that appeared through a symlink into the roots is scanned where it is.
        roots = sorted({self._canonical(r) for r in roots})
        try:
            report = await self._run(lambda: scan(self._ledger, roots, rules, stop=self._stop))
        except sqlite3.Error as e:
            self._failed(e, reason=reason)
            return ScanReport(errors=[f"ledger write failed: {e}"])
        self._metrics.scan_duration.labels(reason).observe(report.seconds)
        if report.games_read >= RELEASE_AFTER_GAMES:
            # A backfill filled the writer's page cache; idle, the daemon needs little.
            await self._run(self._ledger.release_memory)
        self._note_unreadable(roots, report.errors)
        for path in report.new_files:
            self._bus.publish(FileFound(path))
        self._publish(report.new_games, report.rejects)
        for error in report.errors:
            log.warning("scan problem", error=error, reason=reason)
        if report.new_total or report.files_read:
            log.info(
                "scan",
                reason=reason,
                files=report.files,
                files_read=report.files_read,
                new_games=report.new_total,
                seconds=round(report.seconds, 3),
            )
        self._bus.publish(
            ScanFinished(reason, report.files, report.new_total, report.seconds, report.errors)
        )
        return report

    async def index(self, paths: Iterable[str]) -> None:
        """Index files named by watch events."""
        rules = self.rules
        try:
            canonical = {self._canonical(p) for p in paths}
            results = await self._run(lambda: self._index_all(sorted(canonical), rules))
        except sqlite3.Error as e:
            self._failed(e, reason="watch event")
            return
        now = time.time()
        for path, result in results:
            if isinstance(result, OSError):
                log.warning("cannot read", file=path, error=str(result))
                self._unreadable[path] = f"cannot read: {result.strerror or result}"
                continue
            self._unreadable.pop(path, None)
            if result.change is FileChange.NEW:
                self._bus.publish(FileFound(path))
            if result.new_games and result.stat is not None:
                self._metrics.detection_latency.observe(max(0.0, now - result.stat.mtime_ns / 1e9))
            self._publish(result.new_games, result.rejects, file=path)

    def _canonical(self, path: str | Path) -> str:
        """The path of `path` below the watched roots without directory symlinks in it:
        a file (or a directory that just appeared) reached through a symlink into the
        roots is read under its own path, once (a file is one file, whatever the path)."""
        path = os.path.normpath(path)
        real = os.path.realpath(path)
        if real == path:
            return path
        for root in self.watch.roots:
            real_root = os.path.realpath(root)
            if real == real_root or real.startswith(os.path.join(real_root, "")):
                return os.path.normpath(os.path.join(root, os.path.relpath(real, real_root)))
        return path  # outside the roots: the symlink is the only way there

    def _index_all(self, paths: list[str], rules: Rules) -> list[tuple[str, FileResult | OSError]]:
        out: list[tuple[str, FileResult | OSError]] = []
        for path in paths:
            if self._stop.is_set():
                break
            try:
                out.append((path, index_file(self._ledger, path, rules, stop=self._stop)))
            except FileNotFoundError:
                continue  # gone again before we looked; the next scan marks it
            except OSError as e:
                out.append((path, e))
        return out

    def _publish(
        self, new_games: dict[str, Added], rejects: dict[str, int], file: str | None = None
    ) -> None:
        for config, added in new_games.items():
            event = GamesAdded(config, added.count, added.first, added.last, file)
            self._recent.append((event.at, config, added.count))
            self._bus.publish(event)
            log.debug("games", config=config, count=added.count, last_seq=added.last, file=file)
        if rejects:
            self._bus.publish(Rejected(rejects, file))
            log.warning("rejected lines", reasons=rejects, file=file)

    def unreadable(self) -> Unreadable:
        """What cannot be read below the roots (for the status)."""
        return Unreadable.of(self._unreadable)

    def _note_unreadable(self, roots: Sequence[Path | str], errors: Iterable[str]) -> None:
        scanned = [os.path.join(os.path.normpath(r), "") for r in roots]
        for path in [p for p in self._unreadable if (p + os.sep).startswith(tuple(scanned))]:
            del self._unreadable[path]
        for error in errors:
            if (problem := unreadable_problem(error)) is not None:
                self._unreadable[problem[0]] = problem[1]

    def _failed(self, error: sqlite3.Error, reason: str) -> None:
        self.errors += 1
        self.last_error = f"ledger write failed: {error}"
        log.error(
            "ledger write failed; nothing was committed, the next scan retries",
            error=str(error),
            reason=reason,
        )
        self._bus.publish(IngestFailed(self.last_error))

    async def close(self) -> None:
        """Finish the transaction in flight, then close the ledger."""
        self._stop.set()
        await self._run(self._ledger.close)
        self._executor.shutdown(wait=True)
