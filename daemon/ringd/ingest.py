"""The ingest stage: tail and scan work off the event loop, and what it committed.

All ledger writes go through one worker thread, so commits are serialised and
the event loop stays free to answer the control socket during a long backfill.
After each piece of work the stage publishes events: games per config with
their sequence ranges, newly discovered files, rejects.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from ringd.events import EventBus
from ringd.ledger import Added, Ledger
from ringd.metrics import Metrics
from ringd.cursor import Decision, FileResult, index_file
from ringd.scan import ScanReport, scan

T = TypeVar("T")
log = structlog.get_logger("ringd.ingest")


class Ingest:
    def __init__(self, ledger_path: Path, bus: EventBus, metrics: Metrics) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self._ledger = Ledger(ledger_path)
        self._bus = bus
        self._metrics = metrics
        self._stop = threading.Event()
        # Ledger writes that failed (disk full, I/O error): nothing was committed,
        # so the same games are read again by the next scan.
        self.errors = 0
        self.last_error: str | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def scan(self, roots: Sequence[Path | str], max_line: int, reason: str) -> ScanReport:
        """A reconciliation scan of `roots` (or of a directory that just appeared)."""
        try:
            report = await self._run(lambda: scan(self._ledger, roots, max_line, stop=self._stop))
        except sqlite3.Error as e:
            self._failed(e, reason=reason)
            return ScanReport(errors=[f"ledger write failed: {e}"])
        self._metrics.scan_duration.labels(reason).observe(report.seconds)
        for path in report.new_files:
            self._bus.publish("file", path=path)
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
            "scan",
            reason=reason,
            files=report.files,
            new_games=report.new_total,
            seconds=report.seconds,
            errors=report.errors,
        )
        return report

    async def index(self, paths: Iterable[str], max_line: int) -> None:
        """Index files named by watch events."""
        try:
            results = await self._run(lambda: self._index_all(sorted(set(paths)), max_line))
        except sqlite3.Error as e:
            self._failed(e, reason="watch event")
            return
        now = time.time()
        for path, result in results:
            if isinstance(result, OSError):
                log.warning("cannot read", file=path, error=str(result))
                continue
            if result.decision is Decision.NEW:
                self._bus.publish("file", path=path)
            if result.new_games and result.stat is not None:
                self._metrics.detection_latency.observe(max(0.0, now - result.stat.mtime_ns / 1e9))
            self._publish(result.new_games, result.rejects, file=path)

    def _index_all(self, paths: list[str], max_line: int) -> list[tuple[str, FileResult | OSError]]:
        out: list[tuple[str, FileResult | OSError]] = []
        for path in paths:
            if self._stop.is_set():
                break
            try:
                out.append((path, index_file(self._ledger, path, max_line, stop=self._stop)))
            except FileNotFoundError:
                continue  # gone again before we looked; the next scan marks it
            except OSError as e:
                out.append((path, e))
        return out

    def _publish(
        self, new_games: dict[str, Added], rejects: dict[str, int], **context: str
    ) -> None:
        for config, added in new_games.items():
            self._bus.publish(
                "games",
                config=config,
                count=added.count,
                first_seq=added.first,
                last_seq=added.last,
                **context,
            )
            log.debug("games", config=config, count=added.count, last_seq=added.last, **context)
        if rejects:
            self._bus.publish("rejects", reasons=rejects, **context)
            log.warning("rejected lines", reasons=rejects, **context)

    def _failed(self, error: sqlite3.Error, reason: str) -> None:
        self.errors += 1
        self.last_error = f"ledger write failed: {error}"
        log.error(
            "ledger write failed; nothing was committed, the next scan retries",
            error=str(error),
            reason=reason,
        )
        self._bus.publish("ingest_error", error=self.last_error)

    async def close(self) -> None:
        """Finish the transaction in flight, then close the ledger."""
        self._stop.set()
        await self._run(self._ledger.close)
        self._executor.shutdown(wait=True)
