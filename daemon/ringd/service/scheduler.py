"""The scheduler stage: when to start which job, carried out.

The decision itself is the pure `ringd.schedule.decide`; this stage gathers
its inputs (counts, pauses and job history from the ledger, running jobs,
slots, operator triggers), calls it on new games, finished jobs, operator
actions and every second, and hands the starts and cancels to the job runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from ringd.boards import split_config_name
from ringd.ledger import Ledger
from ringd.schedule import ConfigView, Decision, JobView, Policy, decide
from ringd.service.errors import OperatorError
from ringd.service.events import EventBus, GamesAdded, JobFinished
from ringd.service.jobs import JobRunner, RunningJob, Slot
from ringd.service.metrics import Metrics
from ringd.service.preflight import check_trainer
from ringd.service.waiting import wait_event
from ringd.settings import Settings
from ringd.status import JobProgress, Scheduling

log = structlog.get_logger("ringd.scheduler")
SCHEDULE_EVERY_S = 1.0
# While the trainer is unavailable, look again this often (an operator may install it).
PREFLIGHT_RETRY_S = 60.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        slots: list[Slot],
        runner: JobRunner,
        reader: Ledger,
        bus: EventBus,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.slots = slots
        self._runner = runner
        self._reader = reader  # reads only; the runner's connection writes
        self._bus = bus
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._triggers: set[str] = set()
        self._decision = Decision()
        self._ready_since: dict[str, float] = {}
        # Trainer preflight (at start, on reload): no job starts before it passed.
        self.trainer_error: str | None = None
        self._trainer_checked = False
        self._trainer_checked_at = 0.0
        self._preflight: asyncio.Task[None] | None = None

    def reconfigure(self, settings: Settings) -> None:
        """A reload: thresholds and training settings apply at the next decision."""
        self.settings = settings
        self._runner.settings = settings
        self.check_trainer()
        self._wake.set()

    def check_trainer(self) -> None:
        """Check in a child process, in the background, that the trainer can start."""
        if self._preflight is not None:
            self._preflight.cancel()
        if not self.settings.training.enabled:
            self.trainer_error, self._trainer_checked = None, True
            return
        self._trainer_checked_at = time.monotonic()
        self._preflight = asyncio.create_task(self._check_trainer(self.settings.training.command))

    async def _check_trainer(self, command: list[str] | None) -> None:
        error = await check_trainer(command)
        if error is not None and error != self.trainer_error:
            log.error("trainer unavailable: no job starts until it is", error=error)
        elif error is None and self.trainer_error is not None:
            log.info("trainer available again")
        self.trainer_error, self._trainer_checked = error, True
        self._wake.set()

    @property
    def trainer_available(self) -> bool:
        return self._trainer_checked and self.trainer_error is None

    async def run(self) -> None:
        """Decide on new games, finished jobs, operator actions, and every second."""
        follower = asyncio.create_task(self._follow())
        try:
            while True:
                await wait_event(self._wake, SCHEDULE_EVERY_S)
                self._wake.clear()
                if (
                    self.trainer_error is not None
                    and time.monotonic() - self._trainer_checked_at >= PREFLIGHT_RETRY_S
                    and (self._preflight is None or self._preflight.done())
                ):
                    self.check_trainer()
                await self.schedule_once()
        finally:
            follower.cancel()
            if self._preflight is not None:
                self._preflight.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._preflight

    async def _follow(self) -> None:
        async for event in self._bus.follow():
            if isinstance(event, GamesAdded | JobFinished):
                self._wake.set()

    async def schedule_once(self) -> None:
        training = self.settings.training
        policy = Policy(
            enabled=training.enabled and self.trainer_available,
            min_interval_s=training.min_interval_s,
            backoff_base_s=training.backoff_base_s,
            backoff_cap_s=training.backoff_cap_s,
        )
        now = time.time()
        running = [
            JobView(j.job.id, j.job.config, j.slot.name) for j in self._runner.running.values()
        ]
        decision = decide(self._views(), running, [s.name for s in self.slots], policy, now)
        self._decision = decision
        for job_id in decision.cancel:
            self._runner.cancel(job_id, "its configuration was removed")
        slots = {slot.name: slot for slot in self.slots}
        for config, slot_name in decision.start:
            triggered = config in self._triggers
            self._triggers.discard(config)
            job = await self._runner.start(config, slots[slot_name], triggered)
            if job is not None:
                self._metrics.queue_wait.observe(now - self._ready_since.pop(config, now))
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

    def scheduling(self) -> dict[str, Scheduling]:
        """Each config's state, running job and backoff, for the status document."""
        history = self._reader.job_history()
        running = {j.job.config: j for j in self._runner.running.values()}
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

    # -- operator actions -----------------------------------------------------------------

    async def trigger(self, config: str) -> str:
        """Train `config` as soon as a slot is free, below its threshold too."""
        view = next((v for v in self._views() if v.name == config), None)
        if view is None or view.threshold is None:
            raise OperatorError(
                404, f"{config} is not a configured configuration (see `ringd status`)"
            )
        if view.paused:
            raise OperatorError(409, f"{config} is paused: `ringd resume {config}` first")
        if not self.settings.training.enabled:
            raise OperatorError(409, "training is disabled (training.enabled: false)")
        if self.trainer_error is not None:
            raise OperatorError(409, f"trainer unavailable: {self.trainer_error}")
        if view.new_games == 0:
            raise OperatorError(409, f"{config} has no new games to train on")
        if self._training(config):
            raise OperatorError(409, f"{config} is training already")
        self._triggers.add(config)
        self._wake.set()
        log.info("training triggered by an operator", config=config, new_games=view.new_games)
        return f"{config}: training starts as soon as a slot is free ({view.new_games} new games)"

    async def pause(self, config: str, paused: bool) -> str:
        """Start no job for `config` until resumed (kept in the ledger: survives restarts)."""
        if split_config_name(config) is None:
            raise OperatorError(400, f"{config!r} is not a configuration name ({{board}}_{{n}}p)")
        await self._runner.set_paused(config, paused)
        self._triggers.discard(config)
        self._wake.set()
        log.info("paused" if paused else "resumed", config=config)
        if paused:
            running = self._training(config)
            return f"{config} paused" + ("; its running job finishes first" if running else "")
        return f"{config} resumed"

    def _training(self, config: str) -> bool:
        return any(j.job.config == config for j in self._runner.running.values())


def _job_progress(running: RunningJob) -> JobProgress:
    p = running.progress

    def number(key: str) -> float | None:
        value = p.get(key)
        return value if isinstance(value, int | float) else None

    step, total = number("step"), number("total_steps")
    return JobProgress(
        id=running.job.id,
        slot=running.slot.name,
        started_at=running.started,
        first_seq=running.job.first_seq,
        last_seq=running.job.last_seq,
        games=running.job.games,
        step=int(step) if step is not None else None,
        total_steps=int(total) if total is not None else None,
        loss=number("loss"),
        samples_per_s=number("samples_per_s"),
        eta_s=number("eta_s"),
        gpu_util=number("gpu_util"),
    )
