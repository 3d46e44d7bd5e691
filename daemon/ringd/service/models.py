"""The model registry stage: validate new checkpoints in the background, keep `latest`.

The registry's rules (what is a candidate, verdicts cached under stat, latest,
retention) live in `ringd.registry`, those of promotion (which validated
checkpoint may become latest) in `ringd.promote`; this stage runs them after READY
(start-up itself is stat only), after every finished job, every minute, and
when an operator asks, on a ledger connection of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from ringd import promote, registry
from ringd.ledger import CheckpointRow, Ledger
from ringd.service.errors import OperatorError
from ringd.service.events import (
    CheckpointBad,
    CheckpointPromoted,
    CheckpointValidated,
    EventBus,
    JobFinished,
    LatestChanged,
)
from ringd.service.waiting import wait_event
from ringd.settings import Settings
from ringd.status import HeldOutStatus

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
        # Gate commands running (models.promote: command), by candidate path.
        self._gates: dict[str, asyncio.Task[None]] = {}
        # Per config, the held-out metrics of its newest job checkpoint (for status).
        self.held_out: dict[str, HeldOutStatus] = {}
        # Per config, the checkpoint latest.pt points to (what publishing copies).
        self.latest: dict[str, CheckpointRow] = {}

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
                await wait_event(self._changed, RESCAN_S)
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
        rows = await self._promote(await self._db(lambda db: db.checkpoints()))
        best = registry.latest(rows)
        registry.point_latest(self.settings.state_dir / "models", best)
        for config, row in best.items():
            if config not in self.latest or self.latest[config].path != row.path:
                self._bus.publish(LatestChanged(config, row.path))
        self.latest = best
        if models.retention == "delete_old":
            for path in await self._db(lambda db: registry.prune(db, models.keep)):
                log.info("old checkpoint removed (models.retention: delete_old)", file=path)

    async def close(self) -> None:
        for task in self._gates.values():
            task.cancel()  # kills the gate's process group
        await asyncio.gather(*self._gates.values(), return_exceptions=True)
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

    async def promote_by_hand(self, path: str) -> str:
        """Promote `path` by hand, over the gate: it becomes its config's latest."""
        absolute = os.path.abspath(path)
        row = (await self._db(lambda db: db.checkpoints())).get(absolute)
        if row is None:
            raise OperatorError(404, f"{path} is not a registered checkpoint (see `ringd models`)")
        if row.verdict != "ok" or row.removed or row.quarantined_to or row.config is None:
            why = (
                "removed" if row.removed else f"{row.verdict}: {row.reason or 'not validated yet'}"
            )
            raise OperatorError(409, f"{absolute} cannot be latest ({why})")
        gate = self._gates.pop(absolute, None)
        if gate is not None:
            gate.cancel()
        was = f" (not promoted before: {row.promote_reason})" if row.promoted is False else ""
        held_out = await asyncio.to_thread(promote.read_held_out, absolute)
        decision = promote.Decision(True, "promoted by hand" + was)
        await self._record(row, decision, held_out, ranked=True)
        self._changed.set()  # latest.pt moves at once
        return f"{absolute} promoted: it becomes {row.config}'s latest"

    # -- promotion ------------------------------------------------------------------------

    async def _promote(self, rows: dict[str, CheckpointRow]) -> dict[str, CheckpointRow]:
        """Decide the promotion of each validated checkpoint not decided yet, oldest
        first per config (a gate command runs in the background; the config's later
        candidates wait for it). Returns the rows as they are now."""
        models = self.settings.models
        min_samples = self.settings.training.holdout.min_samples
        current = registry.latest(rows)
        waiting: set[str] = set()  # configs whose earlier candidate is at the gate
        decided = False
        for row in promote.undecided(rows):
            config = row.config or ""
            if config in waiting or row.path in self._gates:
                waiting.add(config)
                continue
            held_out = await asyncio.to_thread(promote.read_held_out, row.path)
            decision = promote.decide(row, held_out, current.get(config), models, min_samples)
            if decision is None:
                self._start_gate(row, current[config], held_out)
                waiting.add(config)
                continue
            # A promoted job checkpoint outranks those eligible without a gate.
            promoted_at = await self._record(row, decision, held_out, ranked=row.origin == "job")
            decided = True
            if decision.promoted:
                current[config] = dataclasses.replace(
                    row, promoted=True, promoted_at=promoted_at, held_out=held_out
                )
        if decided:
            rows = await self._db(lambda db: db.checkpoints())
        self.held_out = held_out_status(rows)
        return rows

    def _start_gate(
        self, row: CheckpointRow, current: CheckpointRow, held_out: dict[str, Any] | None
    ) -> None:
        models = self.settings.models
        assert models.promote_command
        log.info("promotion gate started", file=row.path, latest=current.path)

        async def gate() -> None:
            me = asyncio.current_task()
            try:
                decision = await promote.run_gate(
                    models.promote_command or [],
                    row.path,
                    current.path,
                    models.promote_timeout_s,
                )
                if self._gates.get(row.path) is me:  # not promoted by hand meanwhile
                    await self._record(row, decision, held_out, ranked=True)
            finally:
                if self._gates.get(row.path) is me:
                    del self._gates[row.path]
                self._changed.set()

        self._gates[row.path] = asyncio.create_task(gate())

    async def _record(
        self,
        row: CheckpointRow,
        decision: promote.Decision,
        held_out: dict[str, Any] | None,
        *,
        ranked: bool,
    ) -> float | None:
        """Store a decision; log and publish it. Returns its promotion time: None when
        not promoted, or not ``ranked`` (eligible for latest as the newest, not as the
        last promoted: a checkpoint found under models.dirs)."""
        at = time.time() if decision.promoted and ranked else None
        await self._db(
            lambda db: db.set_promotion(
                row.path,
                promoted=decision.promoted,
                reason=decision.reason,
                at=at,
                held_out=held_out,
            )
        )
        (log.info if decision.promoted else log.warning)(
            "checkpoint promoted" if decision.promoted else "checkpoint not promoted",
            file=row.path,
            config=row.config,
            reason=decision.reason,
        )
        self._bus.publish(
            CheckpointPromoted(row.path, row.config, decision.promoted, decision.reason)
        )
        return at


def held_out_status(rows: dict[str, CheckpointRow]) -> dict[str, HeldOutStatus]:
    """Per config, its newest job checkpoint's held-out metrics and promotion (status)."""
    newest: dict[str, CheckpointRow] = {}
    for row in rows.values():
        if row.origin != "job" or row.config is None or row.removed or row.verdict == "bad":
            continue
        if not (row.held_out or {}).get("model"):
            continue
        other = newest.get(row.config)
        if other is None or _age(row) > _age(other):
            newest[row.config] = row
    out = {}
    for config, row in newest.items():
        ev = row.held_out or {}
        model = ev.get("model") or {}
        # The network it started from, when that was a checkpoint (latest, as it was then).
        start = (ev.get("start") or {}) if ev.get("start_checkpoint") else {}
        out[config] = HeldOutStatus(
            checkpoint=row.path,
            loss=model.get("loss"),
            policy_acc=model.get("policy_acc"),
            value_mse=model.get("value_mse"),
            samples=ev.get("samples"),
            start_loss=start.get("loss"),
            start_policy_acc=start.get("policy_acc"),
            start_value_mse=start.get("value_mse"),
            change=promote.change_of(ev) if start else None,
            promoted=row.promoted,
            reason=row.promote_reason,
        )
    return out


def _age(row: CheckpointRow) -> tuple[int, int]:
    return (row.last_seq or 0, row.mtime_ns)
