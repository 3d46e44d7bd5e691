"""The job runner: a training job per GPU slot, as a child process, start to finish.

For each job it writes the job spec (the window of games from the ledger),
starts `python -m ringd.train SPEC` (or `training.command` + SPEC) with the
slot's GPU in CUDA_VISIBLE_DEVICES, reads the JSON-lines progress from its
stdout, keeps its files in `state_dir/jobs/<id>/` (spec.json, events.jsonl,
job.log), enforces `training.timeout_s` (SIGTERM, `grace_s`, SIGKILL) and
records every transition in the ledger. Only a success moves the config's
watermark (in the same transaction as the job's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ringd import childsetup
from ringd.boards import split_config_name
from ringd.fsutil import tree_bytes, write_bytes_atomically
from ringd.ledger import JobRow, Ledger
from ringd.service.errors import OperatorError
from ringd.service.events import EventBus, JobFinished, JobProgressed, JobStarted
from ringd.service.metrics import Metrics
from ringd.settings import Settings, TrainingSettings
from ringd.train.protocol import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    ProtocolError,
    StartEvent,
    TrainerEvent,
    parse_event,
)
from ringd.train.spans import Span
from ringd.train.spec import GameSpan, HoldOut, JobSpec, SpecError, load_spec
from ringd.windows import SPANS_FILE, build_window, window_size

T = TypeVar("T")
log = structlog.get_logger("ringd.jobs")
PROGRESS_EVERY_S = 1.0
STDERR_TAIL = 2000
SHUTDOWN_REASON = "the daemon is stopping"


@dataclass(frozen=True, slots=True)
class Slot:
    name: str  # "cpu", "cuda:N", or a group "cuda:N,M,..."
    device: str  # what the spec asks for: "cpu" or "cuda"
    cuda_visible_devices: str  # "" hides every GPU; a group lists its GPUs
    processes: int = 1  # > 1: one job over that many processes (torchrun), one a GPU


def detect_slots(devices: str | list[int], gpus_per_job: int = 1) -> list[Slot]:
    """One slot per GPU (`auto`: found by NVML or nvidia-smi), else one CPU slot.

    `gpus_per_job` > 1: a slot is a group of that many GPUs, in order (GPUs left over
    form no slot; with fewer GPUs than that, one group of all). A CPU slot then runs
    that many processes.
    """
    if devices == "cpu":
        return [Slot("cpu", "cpu", "", gpus_per_job)]
    indices = devices if isinstance(devices, list) else _find_gpus()
    if not indices:
        return [Slot("cpu", "cpu", "", gpus_per_job)]
    if gpus_per_job == 1:
        return [Slot(f"cuda:{i}", "cuda", str(i)) for i in indices]
    if len(indices) < gpus_per_job:
        log.warning(
            "fewer GPUs than training.gpus_per_job: one job over all of them",
            gpus=indices,
            gpus_per_job=gpus_per_job,
        )
        groups = [indices]
    else:
        count = len(indices) // gpus_per_job
        groups = [indices[k * gpus_per_job : (k + 1) * gpus_per_job] for k in range(count)]
        if left := indices[count * gpus_per_job :]:
            log.warning("GPUs in no job slot (training.gpus_per_job)", gpus=left)
    return [
        Slot("cuda:" + ",".join(map(str, g)), "cuda", ",".join(map(str, g)), len(g)) for g in groups
    ]


def trainer_argv(training: TrainingSettings, slot: Slot, spec: Path, job: str) -> list[str]:
    """The job's command line: `python -m ringd.train SPEC`, under torchrun for several ranks.

    A custom `training.command` gets the spec's path appended and runs as it is (the
    slot's GPUs are in its CUDA_VISIBLE_DEVICES). Several processes on this host:
    `torchrun --standalone --nproc-per-node=N` (the venv's own torchrun, as `python -m
    torch.distributed.run`). `training.launcher`: `prefix` + torchrun with `--nnodes`,
    a c10d rendezvous at `rdzv_endpoint` named after the job, and `--max-restarts`.
    """
    if training.command:
        return [*training.command, str(spec)]
    module = ["-m", "ringd.train", str(spec)]
    launcher = training.launcher
    if slot.processes == 1 and launcher is None:
        return [sys.executable, *module]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    per_node = f"--nproc-per-node={slot.processes}"
    if launcher is None:
        return [*torchrun, "--standalone", per_node, *module]
    return [
        *launcher.prefix,
        *torchrun,
        f"--nnodes={launcher.nnodes}",
        per_node,
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={launcher.rdzv_endpoint}",
        f"--rdzv-id={job}",
        f"--max-restarts={launcher.max_restarts}",
        *module,
    ]


def trainer_env(settings: Settings, slot: Slot) -> dict[str, str]:
    """The job's environment: its GPUs, and where compiled kernels are cached.

    The compile cache (inductor's and Triton's) lives under `state_dir/compile-cache`,
    so the second job of a configuration reuses the first one's kernels (unless the
    daemon's own environment names other folders). torchrun waits `grace_s` for its
    ranks to stop (and save) before it kills them.
    """
    cache = settings.state_dir / "compile-cache"
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,
        "PYTHONUNBUFFERED": "1",
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        or str(cache / "inductor"),
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR") or str(cache / "triton"),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(max(1, round(settings.training.grace_s))),
    }


def _find_gpus() -> list[int]:
    try:
        import pynvml  # nvidia-ml-py (the train extra); untyped: see pyproject

        pynvml.nvmlInit()
        try:
            return list(range(int(pynvml.nvmlDeviceGetCount())))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, or no driver: ask nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [i for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass(slots=True)
class RunningJob:
    job: JobRow
    slot: Slot
    process: asyncio.subprocess.Process
    started: float
    progress: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None  # why the daemon stopped it (shutdown, timeout, cancel)


def job_id(config: str, first_seq: int, last_seq: int) -> str:
    """A job's name: its config and sequence range (the key a retry reuses)."""
    return f"{config}-{first_seq:09d}-{last_seq:09d}"


class JobRunner:
    def __init__(self, settings: Settings, bus: EventBus, metrics: Metrics) -> None:
        self.settings = settings
        self._bus = bus
        self._metrics = metrics
        self._ledger = Ledger(settings.ledger_path)
        # Job bookkeeping off the loop, serialised on one connection of its own.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jobs")
        self.running: dict[str, RunningJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Bytes of each config's sample cache (state_dir/samples/<config>), for the
        # status: measured at start and after each job and its compaction.
        self.samples_bytes: dict[str, int] = {}
        self._compacting: dict[str, asyncio.Task[None]] = {}

    async def db(self, fn: Callable[[Ledger], T]) -> T:
        """Run bookkeeping (jobs, pauses, checkpoints) on the runner's own ledger connection."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._ledger)

    async def recover(self) -> list[JobRow]:
        """Mark jobs a dead daemon left running as interrupted (they will run again)."""
        jobs = await self.db(lambda db: db.interrupt_unfinished_jobs())
        for job in jobs:
            log.warning("job interrupted by a daemon restart", job=job.id, config=job.config)
        return jobs

    async def start(self, config: str, slot: Slot, triggered: bool) -> JobRow | None:
        """Start a job for a config's new games on a slot (None: nothing to train)."""
        training = self.settings.training
        init = _warm_start(self.settings.state_dir / "models" / config / "latest.pt", training)
        state_dir = self.settings.state_dir
        aliases = dict(self.settings.records.board_aliases)
        # The window's spans file and the spec are written on the runner's thread, off
        # the event loop (ringd.windows: in proportion to the new games).
        plan = await self.db(
            lambda db: _plan(db, config, training, triggered, init, state_dir, slot.device, aliases)
        )
        if plan is None:
            return None
        job, spec = plan
        folder = Path(spec.output_dir)
        spec_path = folder / "spec.json"
        argv = trainer_argv(training, slot, spec_path, job.id)
        await _stop_leftover(folder / "job.pid", spec_path, self.settings.training.grace_s)
        env = trainer_env(self.settings, slot)
        with open(folder / "job.log", "ab") as stderr:
            try:
                process = await asyncio.create_subprocess_exec(
                    # If the daemon dies (even by SIGKILL), the job gets SIGTERM, saves a
                    # resumable checkpoint and exits, instead of training on as an orphan
                    # beside the job the restarted daemon starts again. Set in the child
                    # (ringd.childsetup), not by a preexec_fn in this threaded process.
                    *childsetup.wrap(argv, die_with_parent=True),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    cwd=folder,
                    start_new_session=True,  # its own group: signals reach its workers too
                    limit=16 * 1024 * 1024,
                )
            except OSError as e:
                error = f"cannot start {argv[0]}: {e}"
                await self.db(lambda db: db.finish_job(job.id, "failed", error=error))
                log.error("cannot start the trainer", job=job.id, argv=argv, error=error)
                self._finished(job, "failed", None, error, 0.0, None)
                return job
        (folder / "job.pid").write_text(f"{process.pid}\n")
        await self.db(lambda db: db.job_started(job.id, slot.name))
        running = RunningJob(job, slot, process, time.time())
        self.running[job.id] = running
        log.info(
            "job started",
            job=job.id,
            config=config,
            slot=slot.name,
            games=job.games,
            first_seq=job.first_seq,
            last_seq=job.last_seq,
            pid=process.pid,
        )
        if job.skipped:
            log.warning(
                "backlog over training.window.max_games: the job trains on the newest games",
                job=job.id,
                window_max_games=training.window.max_games,
                skipped_games=job.skipped,
            )
        self._bus.publish(
            JobStarted(job.id, config, slot.name, job.first_seq, job.last_seq, job.skipped)
        )
        task = asyncio.create_task(self._guarded(running, folder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _guarded(self, running: RunningJob, folder: Path) -> None:
        """Supervise a job; a bug here must not leave it running unrecorded."""
        try:
            await self._supervise(running, folder)
        except Exception as e:
            log.exception("job supervision failed", job=running.job.id)
            _signal_group(running.process, signal.SIGKILL)
            self.running.pop(running.job.id, None)
            error = f"internal error in ringd: {e!r}"
            await self.db(lambda db: db.finish_job(running.job.id, "failed", error=error))
            self._finished(running.job, "failed", None, error, time.time() - running.started, None)

    async def _supervise(self, running: RunningJob, folder: Path) -> None:
        job, process = running.job, running.process
        timeout = self.settings.training.timeout_s
        events = _Reported()
        reader = asyncio.create_task(self._read_events(running, folder, events))
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), timeout)
        except TimeoutError:
            running.stop_reason = f"timed out after {timeout:g} s"
            await self._terminate(running)
        await reader
        (folder / "job.pid").unlink(missing_ok=True)
        code = process.returncode
        state, error = _outcome(code, running.stop_reason, events, folder)
        checkpoint, sha = events.final_checkpoint()
        # The progress is sampled once a second: keep the last one seen, and a success
        # at its final step (not at the sample before it).
        progress = _final_progress(running.progress, events.done if state == "succeeded" else None)
        if progress:
            await self.db(functools.partial(Ledger.job_progress, job_id=job.id, progress=progress))
        await self.db(
            lambda db: db.finish_job(
                job.id,
                state,
                exit_code=code,
                error=error,
                checkpoint=checkpoint,
                checkpoint_sha256=sha,
            )
        )
        self.running.pop(job.id, None)
        seconds = time.time() - running.started
        # A job the daemon's own stop interrupted is routine (it resumes after the
        # restart); other interruptions (a removed config) are worth a look; failures are errors.
        if state == "succeeded" or running.stop_reason == SHUTDOWN_REASON:
            report = log.info
        else:
            report = log.warning if state == "interrupted" else log.error
        report(
            "job finished",
            job=job.id,
            config=job.config,
            state=state,
            exit_code=code,
            error=error,
            seconds=round(seconds, 1),
            checkpoint=checkpoint,
        )
        self._finished(job, state, code, error, seconds, checkpoint)
        self._after_job(job.config, folder / "spec.json")

    def _after_job(self, config: str, spec_path: Path) -> None:
        """Compact the config's sample cache in the background (a child process at nice
        19 and idle I/O: ringd.train.compact), then measure it again."""
        cache = self.settings.training.sample_cache
        if self._compacting.get(config) is not None and not self._compacting[config].done():
            return  # one at a time per config; the next job's compaction catches up
        # Not among the jobs' tasks: a stop does not wait for it (the child gets SIGTERM;
        # compaction is atomic per shard and picks up after a kill).
        task = asyncio.create_task(self._compact(config, spec_path, cache.compact, cache.margin))
        self._compacting[config] = task

    async def _compact(self, config: str, spec_path: Path, compact: bool, margin: float) -> None:
        folder = self.settings.state_dir / "samples" / config
        try:
            if compact and folder.is_dir() and spec_path.is_file():
                argv = [sys.executable, "-m", "ringd.train.compact", str(spec_path)]
                argv += ["--margin", str(margin)]
                process = await asyncio.create_subprocess_exec(
                    *childsetup.wrap(argv, die_with_parent=True, nice=19, idle_io=True),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                try:
                    out, err = await process.communicate()
                except asyncio.CancelledError:
                    await childsetup.reap(process, signal.SIGTERM)
                    raise
                try:
                    report = json.loads(out.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    report = {"error": err.decode(errors="replace").strip()[-500:]}
                if process.returncode or "error" in report:
                    log.warning("sample cache compaction failed", config=config, **report)
                elif report.get("dropped") or report.get("rewritten"):
                    log.info(
                        "sample cache compacted",
                        config=config,
                        bytes_before=report["bytes_before"],
                        bytes_after=report["bytes_after"],
                        dropped=len(report["dropped"]),
                        rewritten=len(report["rewritten"]),
                        pinned=len(report["pinned"]),
                        seconds=report["seconds"],
                    )
            self.samples_bytes[config] = await asyncio.to_thread(tree_bytes, folder)
        except Exception:
            log.exception("sample cache compaction failed", config=config)

    async def measure_samples(self) -> None:
        """Bytes of every config's sample cache (for the status)."""
        root = self.settings.state_dir / "samples"

        def measure() -> dict[str, int]:
            try:
                names = [e.name for e in os.scandir(root) if e.is_dir()]
            except OSError:
                return {}
            return {name: tree_bytes(root / name) for name in names}

        self.samples_bytes.update(await asyncio.to_thread(measure))

    def _finished(
        self,
        job: JobRow,
        state: str,
        code: int | None,
        error: str | None,
        seconds: float,
        checkpoint: str | None,
    ) -> None:
        self._metrics.jobs.labels(job.config, state).inc()
        self._metrics.training_duration.labels(job.config, state).observe(seconds)
        self._bus.publish(JobFinished(job.id, job.config, state, code, error, seconds, checkpoint))

    async def _read_events(self, running: RunningJob, folder: Path, events: _Reported) -> None:
        """The trainer's JSON lines: kept in events.jsonl, progress to the ledger and the bus."""
        assert running.process.stdout is not None
        last_write = 0.0
        with open(folder / "events.jsonl", "ab") as out:
            while line := await running.process.stdout.readline():
                out.write(line)
                out.flush()
                try:
                    event = parse_event(line)
                except ProtocolError as e:
                    events.protocol_error = str(e)
                    log.error("the trainer broke the protocol", job=running.job.id, error=str(e))
                    continue
                events.note(event)
                if isinstance(event, StartEvent | ProgressEvent):
                    progress = event.model_dump(mode="json", exclude_none=True)
                    running.progress = progress
                    if time.monotonic() - last_write >= PROGRESS_EVERY_S:
                        last_write = time.monotonic()
                        await self.db(
                            functools.partial(
                                Ledger.job_progress, job_id=running.job.id, progress=progress
                            )
                        )
                        self._bus.publish(
                            JobProgressed(running.job.id, running.job.config, progress)
                        )

    async def _terminate(self, running: RunningJob) -> None:
        """SIGTERM the job's process group, wait its grace, then SIGKILL."""
        grace = self.settings.training.grace_s
        _signal_group(running.process, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(running.process.wait()), grace)
        except TimeoutError:
            log.warning("job ignored SIGTERM; killing it", job=running.job.id, grace_s=grace)
            _signal_group(running.process, signal.SIGKILL)
            await running.process.wait()

    def cancel(self, job_id: str, reason: str) -> None:
        """Stop a running job (SIGTERM, grace, SIGKILL); it is recorded as interrupted."""
        running = self.running.get(job_id)
        if running is not None and running.stop_reason is None:
            running.stop_reason = reason
            task = asyncio.create_task(self._terminate(running))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop_all(self, reason: str = SHUTDOWN_REASON) -> None:
        """SIGTERM every job, wait their grace (they save resumable checkpoints), record them."""
        for job_id in list(self.running):
            self.cancel(job_id, reason)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def listing(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent jobs, newest first, running ones with their live progress."""
        rows = await self.db(lambda db: db.jobs(limit))
        live = {job_id: j.progress for job_id, j in self.running.items()}
        return [{**dataclasses.asdict(r), "progress": live.get(r.id, r.progress)} for r in rows]

    def log_path(self, job_id: str) -> Path:
        """A job's log (the trainer's stderr)."""
        path = self.settings.state_dir / "jobs" / job_id / "job.log"
        if "/" in job_id or job_id.startswith(".") or not path.is_file():
            raise OperatorError(404, f"no job {job_id!r} (see `ringd jobs`)")
        return path

    async def set_paused(self, config: str, paused: bool) -> None:
        await self.db(lambda db: db.set_paused(config, paused))

    async def close(self) -> None:
        for task in self._compacting.values():
            task.cancel()
        await asyncio.gather(*self._compacting.values(), return_exceptions=True)
        await self.db(lambda db: db.close())
        self._executor.shutdown(wait=True)


def _plan(
    db: Ledger,
    config: str,
    training: TrainingSettings,
    triggered: bool,
    init: str | None,
    state_dir: Path,
    device: str,
    aliases: dict[str, str] | None = None,
) -> tuple[JobRow, JobSpec] | None:
    """The job for a config's new games, its window's spans file and its spec, written
    to the job's folder."""
    first = db.trained_through(config) + 1
    last = db.max_seq(config)
    if last < first:
        return None
    resumed = _resume_interrupted(db, config, first, triggered, device, state_dir)
    if resumed is not None:
        _write_spec(*resumed)
        return resumed
    new_games = db.count_between(config, first, last)
    total = db.total(config)
    w = training.window
    # At most max_games: a larger backlog trains on its newest games (`skipped`: the
    # older ones; the range's success moves the watermark past them all the same).
    window = window_size(
        total, new_games, min_games=w.min_games, max_games=w.max_games, alpha=w.alpha, beta=w.beta
    )
    # The held-out slice is never trained on (ringd.train.holdout; the trainer checks
    # too); each job is measured on the slice's most recent games instead.
    fraction = training.holdout.fraction
    held_out = db.held_out_games(config, last, training.holdout.games, fraction)
    # The same range (an interrupted or failed job, no newer games) reuses its id
    # and folder, so the trainer resumes from its checkpoint there.
    job = db.create_job(
        job_id(config, first, last), config, first, last, new_games, triggered, window.skipped
    )
    if job.state == "succeeded":
        return None  # this range was trained already: never twice
    folder = state_dir / "jobs" / job.id
    folder.mkdir(parents=True, exist_ok=True)
    # Extend the previous job's spans file (or this range's own, from an earlier attempt).
    earlier = [folder / SPANS_FILE] + [
        state_dir / "jobs" / j.id / SPANS_FILE
        for j in db.jobs(limit=5, config=config)
        if j.id != job.id
    ]
    built = build_window(db, config, last, window.size, fraction, folder / SPANS_FILE, earlier)
    log.info(
        "job window written",
        job=job.id,
        games=built.spans.count,
        extended=built.extended,
        reused=built.reused,
        read=built.read,
        seconds=round(built.seconds, 3),
    )
    board, players = split_config_name(config) or (config, 0)
    spec = JobSpec(
        version=1,
        job_id=job.id,
        config=config,
        board=board,
        players=players,
        encoder=training.encoder,
        spans=built.spans,
        new_from_seq=first,
        skipped_games=window.skipped,
        board_aliases=aliases,
        output_dir=str(folder),
        samples_dir=str(state_dir / "samples"),
        # The registry's validated latest (never a file that failed validation).
        init_checkpoint=init,
        device=device,
        seed=first,
        hyper=training.hyper,
        holdout=HoldOut(fraction=fraction, games=[_span(s) for s in held_out]),
    )
    _write_spec(job, spec)
    return job, spec


def _write_spec(job: JobRow, spec: JobSpec) -> None:
    folder = Path(spec.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(folder / "spec.json", spec.model_dump_json(indent=1).encode())


def _span(s: Span) -> GameSpan:
    return GameSpan(path=s.path, offset=s.offset, length=s.length, key=s.key.hex(), seq=s.seq)


def _resume_interrupted(
    db: Ledger, config: str, first: int, triggered: bool, device: str, state_dir: Path
) -> tuple[JobRow, JobSpec] | None:
    """The config's interrupted job, to run again as it was, if it is the one to resume.

    A job interrupted by a stop or crash of the daemon (or a removed config) runs
    again first: its range, its id and folder, and its spec as written, so the
    trainer finds its `resume.pt` and goes on from there, even when new games
    arrived meanwhile. Its games stay new until it succeeds; the ones that came
    after it stay new for the next job.

    Why not carry its resume.pt into a new job over all new games: a checkpoint
    resumes only the spec it was made for (the training fingerprint covers the
    window's game keys, the seed, the hyperparameters and the job id), and the
    optimizer state and LR schedule of a half-trained run belong to its own range
    and step count; grafting them onto a larger window would train neither the
    old schedule nor a fresh one. Finishing the interrupted range first keeps
    every job's training reproducible from its spec, and loses no work.
    """
    recent = db.jobs(limit=1, config=config)
    if not recent or recent[0].state != "interrupted" or recent[0].first_seq != first:
        return None
    job = recent[0]
    spec_path = state_dir / "jobs" / job.id / "spec.json"
    try:
        spec = load_spec(spec_path.read_bytes())
    except (OSError, SpecError) as e:
        log.warning("cannot resume the interrupted job; a new one starts", job=job.id, error=str(e))
        return None
    if spec.init_checkpoint is not None and not os.path.exists(spec.init_checkpoint):
        log.warning(
            "the interrupted job's starting checkpoint is gone; a new job starts",
            job=job.id,
            init_checkpoint=spec.init_checkpoint,
        )
        return None
    job = db.create_job(job.id, config, job.first_seq, job.last_seq, job.games, triggered)
    if job.state == "succeeded":
        return None
    # The slot may be another one now: the device is not part of what is trained.
    return job, spec.model_copy(update={"device": device})


def _final_progress(progress: dict[str, Any], done: DoneEvent | None) -> dict[str, Any]:
    """The job's last progress; for a success, at its last step."""
    if done is None:
        return progress
    total = progress.get("total_steps") or done.steps
    step = done.steps if done.steps is not None else total
    if step is None:
        return progress
    return {**progress, "step": step, "total_steps": total or step, "eta_s": 0.0}


def _warm_start(latest: Path, training: TrainingSettings) -> str | None:
    """The validated latest checkpoint, if it fits the configured network size.

    After an edit of `training.hyper.channels` or `blocks` it no longer does:
    start from scratch rather than fail every job on mismatched shapes.
    """
    if not (latest.is_symlink() and latest.exists()):
        return None
    path = os.path.realpath(latest)
    try:
        model = json.loads(Path(path).with_suffix(".json").read_bytes())["meta"]["model"]
        fits = (model["channels"], model["blocks"]) == (
            training.hyper.channels,
            training.hyper.blocks,
        )
    except (OSError, ValueError, KeyError, TypeError):
        fits = True  # no sidecar to tell: the job checks the shapes itself
    if not fits:
        log.warning(
            "latest checkpoint has another network size; training from scratch", checkpoint=path
        )
        return None
    return path


@dataclass(slots=True)
class _Reported:
    """What a job's trainer said: its last checkpoint, done and error events."""

    checkpoint: CheckpointEvent | None = None
    done: DoneEvent | None = None
    error: ErrorEvent | None = None
    protocol_error: str | None = None

    def note(self, event: TrainerEvent | None) -> None:
        if isinstance(event, CheckpointEvent):
            self.checkpoint = event
        elif isinstance(event, DoneEvent):
            self.done = event
        elif isinstance(event, ErrorEvent):
            self.error = event

    def final_checkpoint(self) -> tuple[str | None, str | None]:
        """The checkpoint the job ended with (done), else its last one, and its sha256."""
        if self.done is not None and self.done.checkpoint:
            return self.done.checkpoint, self.done.sha256
        if self.checkpoint is not None:
            return self.checkpoint.path, self.checkpoint.sha256
        return None, None


def _outcome(
    code: int | None, stop_reason: str | None, events: _Reported, folder: Path
) -> tuple[str, str | None]:
    if code == 0 and stop_reason is None and events.done is not None:
        return "succeeded", None
    if stop_reason is not None and not stop_reason.startswith("timed out"):
        return "interrupted", stop_reason
    if stop_reason is not None:
        return "failed", stop_reason
    if events.error is not None:
        return "failed", f"{events.error.kind}: {events.error.message}"
    if events.protocol_error is not None:
        return "failed", f"protocol error: {events.protocol_error}"
    if code == 0:
        return "failed", "exited 0 without a done event"
    what = (
        f"killed by {signal.Signals(-code).name}"
        if code is not None and code < 0
        else f"exit code {code}"
    )
    return "failed", f"{what}: {_tail(folder / 'job.log')}"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - STDERR_TAIL))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[-1] if text else "(no output)"


async def _stop_leftover(pid_file: Path, spec_path: Path, grace_s: float) -> None:
    """A job of the same range still running (its daemon died): stop it, let it save."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    deadline = time.monotonic() + grace_s
    sig = signal.SIGTERM
    while _runs(pid, spec_path):
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        await asyncio.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def _runs(pid: int, spec_path: Path) -> bool:
    """Is `pid` alive and running this spec (and not some process that reused the pid)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsencode(spec_path) in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
