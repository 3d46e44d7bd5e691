"""The training loop: from a prepared window to a final checkpoint, reporting as it goes.

Shaped like torchtitan's ``Trainer``: :class:`Trainer`'s constructor does the setup
(device, model and optimizer, resume or warm start, loader, step function,
checkpointer, reporter) and :meth:`Trainer.train` is the loop, which is just: stop if
asked, step, report, checkpoint when due. Everything a step needs is an attribute of
the trainer; there is no global state, so the same loop can later run once per rank
under DDP.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ringd.train.checkpoint import (
    CheckpointError,
    Saved,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    shape_mismatches,
)
from ringd.train.dist import (
    STOP_CHECK_EVERY,
    Dist,
    is_collective_failure,
    launched_by_torchrun,
    local_rank,
)
from ringd.train.dist import init as init_dist
from ringd.train.encode import Encoder, Geometry
from ringd.train.evaluate import Evaluator
from ringd.train.gpu_util import UtilizationSampler, utilization_reader
from ringd.train.loader import (
    Shard,
    TierChoice,
    choose_tier,
    cuda_stream,
    memory_budgets,
    open_loader,
)
from ringd.train.lr import lr_at, warmup_steps
from ringd.train.model import NetShape, PolicyValueNet, build_model, parameter_count
from ringd.train.prepare import HeldOutSamples, Prepared
from ringd.train.protocol import (
    CheckpointEvent,
    CompileStatus,
    DistributedInfo,
    DoneEvent,
    EncoderInfo,
    Events,
    ExitCode,
    GraphStatus,
    HeldOutEval,
    JobFailed,
    LoaderChoice,
    ModelInfo,
    ProgressEvent,
    SkippedGame,
    StartEvent,
    StopFlag,
)
from ringd.train.spec import JobSpec
from ringd.train.step import (
    DDP_GRAPH_WARMUP_STEPS,
    GRAPH_WARMUP_STEPS,
    Forward,
    StepSettings,
    TrainStep,
    make_optimizer,
    restore_optimizer,
)
from ringd.train.tb import Scalars, open_scalars
from ringd.train.window import train_steps

log = logging.getLogger(__name__)

FINAL = "final.pt"
RESUME = "resume.pt"
EXAMPLES = 10  # missing/rejected games listed by name in the start event

LossValues = dict[str, float]  # loss, policy_loss, value_loss, policy_acc of the last report


def train(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    *,
    events: Events,
    stop: StopFlag,
    started: float,
    holdout: HeldOutSamples | None = None,
) -> None:
    """Train on the prepared window and write the final checkpoint; raise JobFailed if not.

    Launched by torchrun, this process is one rank of a job over several processes: it
    joins the process group first (see :mod:`ringd.train.dist`).
    """
    ranks: Dist | None = None
    trainer: Trainer | None = None
    try:
        out = Path(spec.output_dir)
        out.mkdir(parents=True, exist_ok=True)  # checkpoints and TensorBoard files
        device = resolve_device(spec.device, ranked=launched_by_torchrun())
        if launched_by_torchrun():
            ranks = init_dist(device, spec.hyper.dist_timeout_s)
        fingerprint = spec.training_fingerprint()
        resumable = _find_resumable(out, fingerprint)
        if resumable is not None and resumable.path.name == FINAL:
            # A rerun of a finished job (the daemon did not hear of its success): report
            # it again, without loading the window onto the device or training.
            _report_finished(spec, encoder, geometry, prepared, resumable, device, events, started)
            return
        trainer = Trainer(
            spec,
            encoder,
            geometry,
            prepared,
            device=device,
            fingerprint=fingerprint,
            resumable=resumable,
            events=events,
            stop=stop,
            started=started,
            holdout=holdout if ranks is None or ranks.main else None,
            ranks=ranks,
        )
        trainer.train()
    except torch.OutOfMemoryError as e:
        raise JobFailed(
            ExitCode.GPU_OOM,
            f"out of GPU memory: {str(e).splitlines()[0]} (lower hyper.batch_size, "
            "the model size, or hyper.gpu_memory_budget_gb)",
        ) from e
    except Exception as e:
        if ranks is None or not is_collective_failure(e):
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:500]
        ranks = None  # a broken group is not torn down politely: the process exits
        raise JobFailed(
            ExitCode.DISTRIBUTED,
            f"another rank of this job failed or a collective timed out: "
            f"{type(e).__name__}: {first_line}",
        ) from e
    finally:
        if ranks is not None:
            trainer = None  # its DDP model goes before the group it holds (see Dist.close)
            ranks.close()


@dataclass(frozen=True)
class _Resumable:
    """A checkpoint of this very job left by an earlier run: where it stopped, what it had."""

    path: Path
    payload: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.payload["resume"]["step"])

    @property
    def total_steps(self) -> int:
        return int(self.payload["resume"]["total_steps"])  # the interrupted run's count

    @property
    def losses(self) -> LossValues | None:
        losses: LossValues | None = self.payload["meta"].get("losses")
        return losses


class Trainer:
    """One run of a job: the constructor sets everything up, :meth:`train` trains.

    ``fingerprint`` is the spec's training fingerprint (recorded in checkpoints);
    ``resumable`` an unfinished checkpoint of this job to continue from (None: start
    at step 0, from ``spec.init_checkpoint`` if it names one); ``holdout`` the samples
    of the held-out games each checkpoint is evaluated on.
    """

    def __init__(
        self,
        spec: JobSpec,
        encoder: Encoder,
        geometry: Geometry,
        prepared: Prepared,
        *,
        device: torch.device,
        fingerprint: str,
        resumable: _Resumable | None,
        events: Events,
        stop: StopFlag,
        started: float,
        holdout: HeldOutSamples | None = None,
        ranks: Dist | None = None,
    ) -> None:
        # Long on purpose, as torchtitan's Trainer.__init__: the setup reads top to
        # bottom in the order it happens, and each piece is built once, here.
        hyper = spec.hyper
        self.spec, self.encoder, self.geometry, self.prepared = spec, encoder, geometry, prepared
        self.events, self.stop, self.started = events, stop, started
        self.device = device
        # Several processes: each takes its slice of every global batch; rank 0 alone
        # reports and writes checkpoints (ranks is None: one process, rank 0 of 1).
        self.ranks = ranks
        self.main = ranks is None or ranks.main
        world = ranks.world if ranks is not None else 1
        if hyper.batch_size % world:
            raise JobFailed(
                ExitCode.BAD_SPEC,
                f"hyper.batch_size {hyper.batch_size} does not split evenly over {world} "
                "processes (each takes an equal slice of the global batch)",
            )
        self.amp = _configure_device(device)
        use_graph, graph_why = _graph_plan(device, hyper.cuda_graphs)
        use_compile, compile_why = _compile_plan(device, hyper.compile, hyper.compile_mode)
        if ranks is not None and use_graph:
            graph_why += (
                f"; DDP built on a side stream and {DDP_GRAPH_WARMUP_STEPS} eager DDP warmup "
                "steps before the capture (PyTorch's recipe for DDP in a CUDA graph)"
            )

        # The model, fresh from the seed; then resumed, warm-started, or left fresh.
        self.shape = NetShape(
            geometry.planes, geometry.height, geometry.width, hyper.channels, hyper.blocks
        )
        self.model = _build_model(self.shape, spec, device)
        self.optimizer = make_optimizer(
            self.model,
            lr=hyper.lr,
            weight_decay=hyper.weight_decay,
            device=device,
            for_graph=use_graph,
        )
        self.resumed_from = resumable.path if resumable is not None else None
        self.start_step, self.total_steps, self.losses = self._restore(resumable)
        if ranks is not None and not ranks.agree(self.start_step, self.total_steps):
            raise JobFailed(
                ExitCode.DISTRIBUTED,
                f"the ranks found different checkpoints in {spec.output_dir} (this one: step "
                f"{self.start_step} of {self.total_steps}): the spec's output_dir must be "
                "storage every host of the job shares",
            )
        forward = _ddp(self.model, device) if ranks is not None else self.model
        self.lr = functools.partial(
            lr_at,
            total_steps=self.total_steps,
            peak=hyper.lr,
            warmup=warmup_steps(hyper.warmup_steps, self.total_steps),
        )

        # The loader (the fastest tier the window fits in), the step function, the
        # checkpointer and the reporter. What is opened here is closed by train(), or
        # right away if the setup fails.
        self.tier = _loader_tier(spec, device, prepared.window.nbytes)
        out = Path(spec.output_dir)
        with contextlib.ExitStack() as cleanup:
            self.loader = open_loader(
                self.tier,
                prepared.window,
                device=device,
                batch=hyper.batch_size // world,
                seed=spec.seed,
                start_step=self.start_step,
                stop_step=self.total_steps,
                prefetch=hyper.prefetch,
                shard=Shard(ranks.rank, world) if ranks is not None else None,
            )
            cleanup.callback(self.loader.close)
            self.step = TrainStep(
                forward,
                self.optimizer,
                StepSettings(geometry, self.amp, hyper.channels_last),
                batch_size=hyper.batch_size // world,
                device=device,
                graph=use_graph,
                why=graph_why,
                compile=use_compile,
                compile_why=compile_why,
                compile_mode=hyper.compile_mode,
                whole=ranks is None,
                warmup_steps=DDP_GRAPH_WARMUP_STEPS if ranks is not None else GRAPH_WARMUP_STEPS,
                reduce=ranks.mean_ if ranks is not None else None,
            )
            meta = _Meta(
                spec, encoder, geometry, self.shape, prepared, fingerprint, self.total_steps
            )
            scalars = open_scalars(out / "tb")
            # Held-out metrics of the network as it starts; each checkpoint's later.
            self.evaluator = Evaluator(
                holdout,
                geometry,
                device=device,
                amp=self.amp,
                channels_last=hyper.channels_last,
                scalars=scalars,
            )
            self.evaluator.begin(
                self.model,
                init_checkpoint=spec.init_checkpoint,
                step=self.start_step,
                resumed_meta=resumable.payload["meta"] if resumable is not None else None,
            )
            self.checkpointer = Checkpointer(
                out,
                meta,
                events,
                self.model,
                self.optimizer,
                every_s=hyper.checkpoint_every_s,
                evaluator=self.evaluator,
            )
            self.reporter = Reporter(
                events,
                scalars,
                _gpu_sampler(device),
                total_steps=self.total_steps,
                batch_size=hyper.batch_size,
                log_every=hyper.log_every,
            )
            cleanup.callback(self.reporter.close)
            self._cleanup = cleanup.pop_all()

    def train(self) -> None:
        """Run the steps left, write the final checkpoint and report ``done``.

        Raises JobFailed(INTERRUPTED) when stopped, after saving a resumable checkpoint.
        """
        with self._cleanup:  # the loader, GPU sampler and TensorBoard close before "done"
            self.events.emit(self._start_event())
            self.reporter.begin(self.start_step)
            for i in range(self.start_step, self.total_steps):
                if self._stopping(i):
                    raise self._interrupted(i)
                lr = self.lr(i)
                self.step(self.loader.get(i), lr)
                done = i + 1
                if self.reporter.due(done):
                    self.losses = self.reporter.progress(self.step, done, lr)
                if self.main:
                    self.checkpointer.save_if_due(done, self.losses)
            if not self.main:
                return  # rank 0 writes the final checkpoint and reports done
            final = self.checkpointer.save_final(self.losses)
        self.events.emit(self._done_event(final))

    def _stopping(self, step: int) -> bool:
        """Whether to stop before ``step``; ranks agree every STOP_CHECK_EVERY steps."""
        if self.ranks is None:
            return self.stop()
        if step % STOP_CHECK_EVERY and step != self.start_step:
            return False
        return self.ranks.any(self.stop())

    def _restore(self, resumable: _Resumable | None) -> tuple[int, int, LossValues | None]:
        """Resume or warm-start the model; (first step, total steps, last losses)."""
        if resumable is not None:
            self.model.load_state_dict(resumable.payload["model"])
            restore_optimizer(self.optimizer, resumable.payload["optimizer"])
            log.info(
                "resuming from %s at step %d of %d",
                resumable.path,
                resumable.step,
                resumable.total_steps,
            )
            return resumable.step, resumable.total_steps, resumable.losses
        hyper = self.spec.hyper
        total_steps = train_steps(
            self.prepared.new_samples,
            batch_size=hyper.batch_size,
            replay_ratio=hyper.replay_ratio,
            steps=hyper.steps,
        )
        if self.spec.init_checkpoint is not None:
            _warm_start(self.model, Path(self.spec.init_checkpoint), self.encoder, self.geometry)
        return 0, total_steps, None

    def _interrupted(self, step: int) -> JobFailed:
        saved = self.checkpointer.save_resume(step, self.losses) if self.main else None
        if self.ranks is not None:
            self.ranks.barrier()  # every rank stays until rank 0's checkpoint is written
        where = f"; resumable checkpoint {saved.path}" if saved else ""
        return JobFailed(
            ExitCode.INTERRUPTED,
            f"{self.stop.signal or 'a stop on another rank'} at step {step} of "
            f"{self.total_steps}{where}",
        )

    def _start_event(self) -> StartEvent:
        return _start_event(
            self.spec,
            self.encoder,
            self.geometry,
            self.prepared,
            total_steps=self.total_steps,
            start_step=self.start_step,
            device=str(self.device),
            amp=str(self.amp).removeprefix("torch.") if self.amp else None,
            loader=LoaderChoice(tier=self.tier.tier, why=self.tier.why),
            cuda_graph=GraphStatus(enabled=self.step.graph_enabled, why=self.step.graph_why),
            compile=self._compile_status(),
            distributed=_distributed_info(self.ranks),
            model=ModelInfo(**self.shape.as_dict(), parameters=parameter_count(self.model)),
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            init_checkpoint=self.spec.init_checkpoint if self.resumed_from is None else None,
        )

    def _done_event(self, final: Saved) -> DoneEvent:
        return DoneEvent(
            steps=self.total_steps,
            **(self.losses or {}),
            seconds=round(time.monotonic() - self.started, 3),
            checkpoint=str(final.path),
            sha256=final.sha256,
            seq_first=self.prepared.seq_first,
            seq_last=self.prepared.seq_last,
            cuda_graph=GraphStatus(enabled=self.step.graph_enabled, why=self.step.graph_why),
            compile=self._compile_status(),
            gpu_util_median=self.reporter.gpu_median(),
            eval=self.checkpointer.last_eval,
        )

    def _compile_status(self) -> CompileStatus:
        step = self.step
        return CompileStatus(
            enabled=step.compile_enabled, why=step.compile_why, seconds=step.compile_seconds
        )


def _distributed_info(ranks: Dist | None) -> DistributedInfo | None:
    if ranks is None:
        return None
    return DistributedInfo(
        world_size=ranks.world, backend=ranks.backend, local_world_size=ranks.local_world
    )


def _start_event(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    *,
    total_steps: int,
    start_step: int,
    device: str,
    amp: str | None,
    loader: LoaderChoice,
    cuda_graph: GraphStatus,
    compile: CompileStatus,
    distributed: DistributedInfo | None,
    model: ModelInfo,
    resumed_from: str | None,
    init_checkpoint: str | None,
) -> StartEvent:
    """The ``start`` event: the window as prepared, and this run's plan."""
    missing, rejected = prepared.missing, prepared.rejected
    return StartEvent(
        job_id=spec.job_id,
        config=spec.config,
        games=prepared.games,
        usable_games=prepared.games - len(missing) - len(rejected),
        missing_games=len(missing),
        missing=[SkippedGame(seq=m.seq, reason=m.reason) for m in missing[:EXAMPLES]],
        rejected_games=len(rejected),
        rejected=[
            SkippedGame(seq=prepared.seq_of(i), reason=why) for i, why in rejected[:EXAMPLES]
        ],
        new_games=prepared.new_games,
        skipped_games=spec.skipped_games,
        encoded_games=prepared.encoded,
        cached_games=prepared.cached,
        samples=prepared.window.size,
        new_samples=prepared.new_samples,
        steps=total_steps,
        start_step=start_step,
        batch_size=spec.hyper.batch_size,
        encoder=EncoderInfo(name=encoder.name, version=encoder.version, **geometry.as_dict()),
        device=device,
        amp=amp,
        loader=loader,
        cuda_graph=cuda_graph,
        compile=compile,
        distributed=distributed,
        model=model,
        resumed_from=resumed_from,
        init_checkpoint=init_checkpoint,
    )


def _report_finished(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    final: _Resumable,
    device: torch.device,
    events: Events,
    started: float,
) -> None:
    """``start`` and ``done`` again for a job whose final checkpoint is already there."""
    meta = final.payload["meta"]
    already = "already trained: its final checkpoint is there"
    events.emit(
        _start_event(
            spec,
            encoder,
            geometry,
            prepared,
            total_steps=final.total_steps,
            start_step=final.total_steps,
            device=str(device),
            amp=None,
            loader=LoaderChoice(tier=None, why=already),
            cuda_graph=GraphStatus(enabled=False, why=already),
            compile=CompileStatus(enabled=False, why=already),
            distributed=None,
            model=ModelInfo.model_validate(meta["model"]),
            resumed_from=str(final.path),
            init_checkpoint=None,
        )
    )
    events.emit(
        DoneEvent(
            steps=final.total_steps,
            **(final.losses or {}),
            seconds=round(time.monotonic() - started, 3),
            checkpoint=str(final.path),
            sha256=file_sha256(final.path),
            seq_first=meta.get("seq_first"),
            seq_last=meta.get("seq_last"),
            cuda_graph=GraphStatus(enabled=False, why=already),
            compile=CompileStatus(enabled=False, why=already),
            gpu_util_median=None,
            eval=meta.get("eval"),
        )
    )


class Reporter:
    """Progress events, TensorBoard scalars and GPU utilisation, every ``log_every`` steps.

    Reading the loss sums is the loop's only wait for the device, once per report.
    """

    def __init__(
        self,
        events: Events,
        scalars: Scalars,
        sampler: UtilizationSampler | None,
        *,
        total_steps: int,
        batch_size: int,
        log_every: int,
    ) -> None:
        self._events = events
        self._scalars = scalars
        self._sampler = sampler
        self._sampling = False
        self._total = total_steps
        self._batch = batch_size
        self._every = log_every
        self._since, self._since_step = time.monotonic(), 0

    def begin(self, step: int) -> None:
        """Start sampling the GPU and timing the steps from ``step`` on."""
        if self._sampler:
            self._sampler.__enter__()
            self._sampling = True
        self._since, self._since_step = time.monotonic(), step

    def due(self, done: int) -> bool:
        """Whether the loop reports after ``done`` steps: every ``log_every``, and the last."""
        return done % self._every == 0 or done == self._total

    def progress(self, step: TrainStep, done: int, lr: float) -> LossValues:
        """Emit a ``progress`` event and its scalars; the averaged losses, for checkpoints."""
        averages = step.read_losses()
        assert averages is not None  # the loop reports only after a step
        losses = averages.as_dict()
        now = time.monotonic()
        rate = (done - self._since_step) * self._batch / max(now - self._since, 1e-9)
        eta = (self._total - done) * self._batch / rate if rate > 0 else None
        gpu = self._sampler.latest() if self._sampler else None
        self._events.emit(
            ProgressEvent(
                step=done,
                total_steps=self._total,
                **losses,
                lr=lr,
                samples_per_s=round(rate, 1),
                eta_s=round(eta, 1) if eta is not None else None,
                gpu_util=gpu,
                cuda_graph=step.graph_enabled,
                compiled=step.compile_enabled,
            )
        )
        for name, value in losses.items():
            self._scalars.add(f"train/{name}", value, done)
        self._scalars.add("train/lr", lr, done)
        self._scalars.add("speed/samples_per_s", rate, done)
        if gpu is not None:
            self._scalars.add("speed/gpu_utilization", float(gpu), done)
        self._since, self._since_step = now, done
        return losses

    def gpu_median(self) -> float | None:
        """The median GPU utilisation sampled so far (None off CUDA or without NVML)."""
        return self._sampler.median() if self._sampler else None

    def close(self) -> None:
        """Stop the GPU sampler and flush the TensorBoard files."""
        if self._sampler and self._sampling:
            self._sampler.__exit__()
            self._sampling = False
        self._scalars.close()


@dataclass(frozen=True)
class _Meta:
    """What every checkpoint of this job records about it."""

    spec: JobSpec
    encoder: Encoder
    geometry: Geometry
    shape: NetShape
    prepared: Prepared
    fingerprint: str
    total_steps: int

    def at(self, step: int, losses: LossValues | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "job_id": self.spec.job_id,
            "config": self.spec.config,
            "board": self.spec.board,
            "players": self.spec.players,
            "encoder": {"name": self.encoder.name, "version": self.encoder.version},
            "geometry": self.geometry.as_dict(),
            "model": self.shape.as_dict(),
            "seq_first": self.prepared.seq_first,
            "seq_last": self.prepared.seq_last,
            "new_from_seq": self.spec.new_from_seq,
            "samples": self.prepared.window.size,
            "step": step,
            "total_steps": self.total_steps,
            "losses": losses,
            "init_checkpoint": self.spec.init_checkpoint,
            "created": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "created_unix": round(now.timestamp(), 3),
            "torch": str(torch.__version__),  # a plain str: weights_only loads refuse TorchVersion
        }


class Checkpointer:
    """This job's checkpoints in its output folder: when one is due, writing, reporting.

    A resumable checkpoint (``resume.pt``) every ``every_s`` seconds and when the job
    is stopped; the final one (``final.pt``) at the end, which supersedes it. Each but
    the one saved on a stop is first evaluated on the held-out samples (``evaluator``).
    """

    def __init__(
        self,
        out: Path,
        meta: _Meta,
        events: Events,
        model: PolicyValueNet,
        optimizer: torch.optim.Optimizer,
        *,
        every_s: float,
        evaluator: Evaluator | None = None,
    ) -> None:
        self._out = out
        self._meta = meta
        self._events = events
        self._model = model
        self._optimizer = optimizer
        self._every_s = every_s
        self._last_save = time.monotonic()
        self._evaluator = evaluator
        self.last_eval: HeldOutEval | None = None  # of the last checkpoint saved

    def save_if_due(self, step: int, losses: LossValues | None) -> None:
        """A resumable checkpoint after ``step`` steps if ``every_s`` have passed since the last.

        Never after the last step: the final checkpoint follows at once.
        """
        if step < self._meta.total_steps and time.monotonic() - self._last_save >= self._every_s:
            self._save(RESUME, step, losses, evaluate=True)

    def save_resume(self, step: int, losses: LossValues | None) -> Saved:
        """``resume.pt`` at ``step``: a rerun of the same spec continues from there."""
        return self._save(RESUME, step, losses)

    def save_final(self, losses: LossValues | None) -> Saved:
        """``final.pt``, then remove ``resume.pt`` (the final one resumes too: a rerun ends)."""
        saved = self._save(FINAL, self._meta.total_steps, losses, evaluate=True)
        for stale in (self._out / RESUME, (self._out / RESUME).with_suffix(".json")):
            stale.unlink(missing_ok=True)
        return saved

    def _save(
        self, name: str, step: int, losses: LossValues | None, *, evaluate: bool = False
    ) -> Saved:
        held_out = None
        if self._evaluator is not None:
            e = self._evaluator
            held_out = e.evaluate(self._model, step) if evaluate else e.unevaluated(step)
        self.last_eval = held_out
        saved = save_checkpoint(
            self._out / name,
            meta={**self._meta.at(step, losses), "eval": _dumped(held_out)},
            model=self._model.state_dict(),
            optimizer=self._optimizer.state_dict(),
            resume={
                "fingerprint": self._meta.fingerprint,
                "step": step,
                "total_steps": self._meta.total_steps,
            },
        )
        self._last_save = time.monotonic()
        log.info("checkpoint %s at step %d (sha256 %s)", saved.path, step, saved.sha256[:12])
        kind = "final" if name == FINAL else "resume"
        self._events.emit(
            CheckpointEvent(
                path=str(saved.path), sha256=saved.sha256, step=step, kind=kind, eval=held_out
            )
        )
        return saved


def _dumped(held_out: HeldOutEval | None) -> dict[str, Any] | None:
    return held_out.model_dump(mode="json") if held_out is not None else None


def _configure_device(device: torch.device) -> torch.dtype | None:
    """Set the CUDA math flags; the autocast dtype (bf16 where supported, None: float32)."""
    if device.type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def _build_model(shape: NetShape, spec: JobSpec, device: torch.device) -> PolicyValueNet:
    """The network, initialised from the spec's seed, on ``device`` in its memory format."""
    model = build_model(shape, seed=spec.seed).to(device)
    if spec.hyper.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _loader_tier(spec: JobSpec, device: torch.device, window_bytes: int) -> TierChoice:
    """The loader tier the spec asks for, or (``auto``) the fastest the window fits in."""
    hyper = spec.hyper
    gpu_budget, host_budget = memory_budgets(
        device, hyper.gpu_memory_budget_gb, hyper.host_memory_budget_gb
    )
    return choose_tier(
        hyper.loader,
        cuda=device.type == "cuda",
        window_bytes=window_bytes,
        gpu_budget=gpu_budget,
        host_budget=host_budget,
    )


def _gpu_sampler(device: torch.device) -> UtilizationSampler | None:
    if device.type != "cuda":
        return None
    reader = utilization_reader(device.index or 0, _pci_bus_id(device))
    return UtilizationSampler(reader) if reader else None


def resolve_device(requested: str, *, ranked: bool = False) -> torch.device:
    """``auto``: the current CUDA device if there is one, else the CPU.

    ``ranked`` (a rank started by torchrun): ``auto`` and ``cuda`` mean GPU LOCAL_RANK
    of those CUDA_VISIBLE_DEVICES lists (the job's group of GPUs).
    """
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise JobFailed(ExitCode.BAD_SPEC, f"device {requested!r}: CUDA is not available here")
    device = torch.device("cuda" if requested == "auto" else requested)
    if ranked:
        if device.index is not None:
            raise JobFailed(
                ExitCode.BAD_SPEC,
                f"device {requested!r}: a job over several processes takes GPU LOCAL_RANK "
                "of its group; the spec's device must be auto or cuda",
            )
        device = torch.device("cuda", local_rank())
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise JobFailed(
            ExitCode.BAD_SPEC,
            f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) visible",
        )
    torch.cuda.set_device(device)
    return device


def _graph_plan(device: torch.device, wanted: bool) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"device is {device.type}: CUDA graphs need a CUDA device"
    if not wanted:
        return False, "hyper.cuda_graphs is false"
    return True, (
        f"whole step (unpack, forward, backward, AdamW) captured after "
        f"{GRAPH_WARMUP_STEPS} eager warmup steps"
    )


def _compile_plan(device: torch.device, wanted: bool | str, mode: str) -> tuple[bool, str]:
    """Whether to torch.compile the model, and why (``hyper.compile``: auto, true, false)."""
    if wanted is False:
        return False, "hyper.compile is false"
    if wanted == "auto" and device.type != "cuda":
        return False, "hyper.compile is auto: a CPU device runs the model uncompiled"
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return True, (
        f"torch.compile (inductor, mode {mode}) of the model, inside the step; compile "
        f"cache {cache or 'at inductor default (TORCHINDUCTOR_CACHE_DIR unset)'}"
    )


def _ddp(model: PolicyValueNet, device: torch.device) -> Forward:
    """``model`` under DistributedDataParallel (gradients all-reduced in its backward).

    On CUDA it is built on a side stream, as PyTorch's notes on DDP in a CUDA graph ask.
    Buffers (batch norm statistics) are not broadcast each step: they stay per rank,
    and rank 0's are the ones saved.
    """
    from torch.nn.parallel import DistributedDataParallel

    # Newer torch renames the knob (and still syncs at construction, which is fine here:
    # every rank starts from the same seed or checkpoint).
    known = inspect.signature(DistributedDataParallel.__init__).parameters
    knob = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    per_rank: dict[str, Any] = {knob: False}
    if device.type != "cuda":
        return DistributedDataParallel(model, **per_rank)
    side = cuda_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        ddp = DistributedDataParallel(model, device_ids=[device.index], **per_rank)
    torch.cuda.current_stream(device).wait_stream(side)
    return ddp


def _pci_bus_id(device: torch.device) -> str | None:
    props = torch.cuda.get_device_properties(device)
    bus, dev, domain = (getattr(props, f"pci_{k}_id", None) for k in ("bus", "device", "domain"))
    if bus is None or dev is None or domain is None:
        return None
    return f"{domain:08X}:{bus:02X}:{dev:02X}.0"


def _find_resumable(out: Path, fingerprint: str) -> _Resumable | None:
    """A checkpoint of this very job left by an earlier run (final first, then resume)."""
    for name in (FINAL, RESUME):
        path = out / name
        if not path.exists():
            continue
        try:
            payload = load_checkpoint(path)
        except CheckpointError as e:
            log.warning("not resuming from %s: %s", path, e)
            continue
        if payload["resume"].get("fingerprint") != fingerprint:
            log.warning("not resuming from %s: it was made for another spec", path)
            continue
        return _Resumable(path, payload)
    return None


def _warm_start(model: PolicyValueNet, path: Path, encoder: Encoder, geometry: Geometry) -> None:
    """Load the weights of ``path`` into ``model``; JobFailed(BAD_CHECKPOINT) if they do not fit."""
    try:
        payload = load_checkpoint(path)
    except CheckpointError as e:
        raise JobFailed(ExitCode.BAD_CHECKPOINT, str(e)) from e
    meta = payload["meta"]
    theirs = meta.get("encoder", {})
    if (
        theirs.get("name") == encoder.name
        and theirs.get("version") != encoder.version
        and meta.get("model") == model.shape.as_dict()
    ):
        # A new version of the same encoder (grid v1 -> v2 read more move formats) with
        # the same planes and board, into the same network: the weights still fit.
        log.info(
            "warm start from %s: trained with encoder %s v%s, this job encodes with v%s "
            "(same planes, board and network)",
            path,
            encoder.name,
            theirs.get("version"),
            encoder.version,
        )
        theirs = {"name": encoder.name, "version": encoder.version}
    if (theirs.get("name"), theirs.get("version")) != (encoder.name, encoder.version):
        raise JobFailed(
            ExitCode.BAD_CHECKPOINT,
            f"{path}: trained with encoder {theirs.get('name')} v{theirs.get('version')} "
            f"({_shape_text(meta.get('model'))}), this job encodes with {encoder.name} "
            f"v{encoder.version} ({_shape_text(model.shape.as_dict())})",
        )
    problems = shape_mismatches(payload["model"], model.state_dict())
    if problems:
        listed = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise JobFailed(
            ExitCode.BAD_CHECKPOINT,
            f"{path}: {len(problems)} tensor(s) do not fit this model "
            f"({geometry.planes} planes, {model.shape.channels} channels, "
            f"{model.shape.blocks} blocks): {listed}",
        )
    model.load_state_dict(payload["model"])


def _shape_text(shape: object) -> str:
    if not isinstance(shape, dict):
        return "network unknown"
    return ", ".join(
        f"{k} {shape.get(k)}" for k in ("planes", "height", "width", "channels", "blocks")
    )
