"""The model registry stage: validate new checkpoints in the background, keep `latest`.

The registry's rules (what is a candidate, verdicts cached under stat, latest,
retention) live in `ringd.registry`; this stage runs them after READY
(start-up itself is stat only), after every finished job, every minute, and
when an operator asks, on a ledger connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from ringd import registry
from ringd.ledger import Ledger
from ringd.service.errors import OperatorError
from ringd.service.events import CheckpointBad, CheckpointValidated, EventBus, JobFinished
from ringd.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("ringd.models")
RESCAN_S = 60.0


class ModelRegistry:
    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self._bus = bus
        self._ledger = Ledger(settings.ledger_path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="models")
        self._changed = asyncio.Event()
        self._force: set[str] = set()
        self.stats: dict[str, Any] = {"validated": 0, "quarantined": 0, "last_error": None}

    async def _db(self, fn: Callable[[Ledger], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._ledger)

    async def run(self) -> None:
        """Refresh now, then after every finished job, on request, and every minute."""
        follower = asyncio.create_task(self._follow())
        try:
            while True:
                try:
                    await self._refresh()
                except registry.ValidatorFailed as e:
                    self.stats["last_error"] = str(e)
                    log.error("checkpoint validation failed; retrying later", error=str(e))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), RESCAN_S)
                self._changed.clear()
        finally:
            follower.cancel()

    async def _follow(self) -> None:
        async for event in self._bus.follow():
            if isinstance(event, JobFinished):
                self._changed.set()

    async def _refresh(self) -> None:
        models = self.settings.models
        force, self._force = self._force, set()
        pending = await self._db(lambda db: registry.refresh(db, models.dirs, force))
        if pending:
            verdicts = await registry.validate(pending, models.validate_concurrency)
            bad = await self._db(lambda db: registry.record(db, verdicts))
            self.stats["validated"] += len(verdicts)
            self.stats["quarantined"] += len(bad)
            self.stats["last_error"] = None
            for path, reason in bad:
                log.error("checkpoint failed validation; quarantined", file=path, reason=reason)
                self._bus.publish(CheckpointBad(path, reason))
            for v in verdicts:
                if v["ok"]:
                    self._bus.publish(CheckpointValidated(v["path"], v.get("config")))
        rows = await self._db(lambda db: db.checkpoints())
        registry.point_latest(self.settings.state_dir / "models", registry.latest(rows))
        if models.retention == "delete_old":
            for path in await self._db(lambda db: registry.prune(db, models.keep)):
                log.info("old checkpoint removed (models.retention: delete_old)", file=path)

    async def close(self) -> None:
        await self._db(lambda db: db.close())
        self._executor.shutdown(wait=True)

    # -- operator actions -----------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        """`ringd models`: per config latest, counts and sizes; every checkpoint."""
        rows = await self._db(lambda db: db.checkpoints())
        return {**registry.summary(rows), "stats": self.stats}

    async def validate(self, path: str | None) -> str:
        """Validate `path` (or every checkpoint) again, in the background."""
        if path is not None:
            known = await self._db(lambda db: db.checkpoints())
            if os.path.abspath(path) not in known:
                raise OperatorError(
                    404, f"{path} is not a registered checkpoint (see `ringd models`)"
                )
            self._force.add(os.path.abspath(path))
        else:
            self._force.add("*")
        self._changed.set()
        return f"validating {path or 'every checkpoint'} again in the background"

    async def pin(self, path: str, pinned: bool) -> str:
        """Keep `path` from retention (or allow it again)."""
        absolute = os.path.abspath(path)
        if not await self._db(lambda db: db.set_checkpoint_flags(absolute, pinned=pinned)):
            raise OperatorError(404, f"{path} is not a registered checkpoint (see `ringd models`)")
        return f"{absolute} {'pinned: never removed by retention' if pinned else 'unpinned'}"
