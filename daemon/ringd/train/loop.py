"""The training loop: from a prepared window to a final checkpoint, reporting as it goes.

Read :func:`_train` top to bottom: device, model and optimizer, resume or warm start,
loader, step function, the ``start`` event, then the loop, which is just: stop if
asked, step, report. Everything a step needs is passed in; there is no global
state, so the same loop can later run once per rank under DDP.
"""

from __future__ import annotations

import contextlib
import logging
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
from ringd.train.encode import Encoder, Geometry
from ringd.train.gpu_util import UtilizationSampler, utilization_reader
from ringd.train.loader import choose_tier, memory_budgets, open_loader
from ringd.train.model import NetShape, PolicyValueNet, build_model, parameter_count
from ringd.train.prepare import Prepared
from ringd.train.protocol import Events, ExitCode, JobFailed, StopFlag
from ringd.train.schedule import lr_at, warmup_steps
from ringd.train.spec import JobSpec
from ringd.train.step import (
    GRAPH_WARMUP_STEPS,
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


def train(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    *,
    events: Events,
    stop: StopFlag,
    started: float,
) -> None:
    """Train on the prepared window and write the final checkpoint; raise JobFailed if not."""
    try:
        _train(spec, encoder, geometry, prepared, events=events, stop=stop, started=started)
    except torch.OutOfMemoryError as e:
        raise JobFailed(
            ExitCode.GPU_OOM,
            f"out of GPU memory: {str(e).splitlines()[0]} (lower hyper.batch_size, "
            "the model size, or hyper.gpu_memory_budget_gb)",
        ) from e


def _train(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    *,
    events: Events,
    stop: StopFlag,
    started: float,
) -> None:
    hyper = spec.hyper
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None

    # The model, fresh from the seed; then resumed, warm-started, or left fresh.
    shape = NetShape(geometry.planes, geometry.height, geometry.width, hyper.channels, hyper.blocks)
    model = build_model(shape, seed=spec.seed).to(device)
    if hyper.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    use_graph, graph_why = _graph_plan(device, hyper.cuda_graphs)
    optimizer = make_optimizer(
        model, lr=hyper.lr, weight_decay=hyper.weight_decay, device=device, for_graph=use_graph
    )
    fingerprint = spec.training_fingerprint()
    resumed = _find_resume(out, fingerprint)
    if resumed is not None:
        resumed_from, payload = resumed
        model.load_state_dict(payload["model"])
        restore_optimizer(optimizer, payload["optimizer"])
        start_step = int(payload["resume"]["step"])
        total_steps = int(payload["resume"]["total_steps"])  # the interrupted run's count
        losses: dict[str, float] | None = payload["meta"].get("losses")
        log.info("resuming from %s at step %d of %d", resumed_from, start_step, total_steps)
    else:
        resumed_from, start_step, losses = None, 0, None
        total_steps = train_steps(
            prepared.new_samples,
            batch_size=hyper.batch_size,
            replay_ratio=hyper.replay_ratio,
            steps=hyper.steps,
        )
        if spec.init_checkpoint is not None:
            _warm_start(model, Path(spec.init_checkpoint), encoder, geometry)
    if resumed_from is not None and resumed_from.name == FINAL:
        # A rerun of a finished job (the daemon did not hear of its success): report it again.
        _report_finished(
            spec, encoder, geometry, prepared, resumed_from, payload, events, started, device
        )
        return
    warmup = warmup_steps(hyper.warmup_steps, total_steps)

    def lr(i: int) -> float:
        return lr_at(i, total_steps=total_steps, peak=hyper.lr, warmup=warmup)

    # The loader: the fastest tier the window fits in. Then the step function.
    gpu_budget, host_budget = memory_budgets(
        device, hyper.gpu_memory_budget_gb, hyper.host_memory_budget_gb
    )
    tier = choose_tier(
        hyper.loader,
        cuda=cuda,
        window_bytes=prepared.window.nbytes,
        gpu_budget=gpu_budget,
        host_budget=host_budget,
    )
    checkpoints = _Checkpoints(
        out, _Meta(spec, encoder, geometry, shape, prepared, fingerprint, total_steps), events
    )
    with contextlib.ExitStack() as cleanup:
        loader = open_loader(
            tier,
            prepared.window,
            device=device,
            batch=hyper.batch_size,
            seed=spec.seed,
            start_step=start_step,
            stop_step=total_steps,
            prefetch=hyper.prefetch,
        )
        cleanup.callback(loader.close)
        step = TrainStep(
            torch.compile(model) if hyper.compile else model,
            optimizer,
            StepSettings(geometry, amp, hyper.channels_last),
            batch_size=hyper.batch_size,
            device=device,
            graph=use_graph,
            why=graph_why,
        )
        events.emit(
            "start",
            **_start_fields(spec, encoder, geometry, prepared, total_steps, start_step),
            loader={"tier": tier.tier, "why": tier.why},
            device=str(device),
            amp=str(amp).removeprefix("torch.") if amp else None,
            cuda_graph={"enabled": use_graph, "why": graph_why},
            model={**shape.as_dict(), "parameters": parameter_count(model)},
            resumed_from=str(resumed_from) if resumed_from else None,
            init_checkpoint=spec.init_checkpoint if resumed_from is None else None,
        )
        report = cleanup.enter_context(
            _Reporter(
                events,
                open_scalars(out / "tb"),
                _gpu_sampler(device),
                total_steps,
                hyper.batch_size,
            )
        )
        report.begin(start_step)
        last_save = time.monotonic()

        for i in range(start_step, total_steps):
            if stop():
                saved = checkpoints.save(RESUME, model, optimizer, i, losses)
                raise JobFailed(
                    ExitCode.INTERRUPTED,
                    f"{stop.signal} at step {i} of {total_steps}; resumable checkpoint {saved.path}",
                )
            step(loader.get(i), lr(i))
            done = i + 1
            if done % hyper.log_every == 0 or done == total_steps:
                losses = report.progress(step, done, lr(i))
            if time.monotonic() - last_save >= hyper.checkpoint_every_s and done < total_steps:
                checkpoints.save(RESUME, model, optimizer, done, losses)
                last_save = time.monotonic()

        final = checkpoints.save(FINAL, model, optimizer, total_steps, losses)
        checkpoints.remove(RESUME)  # the final checkpoint resumes too: a rerun ends at once

    events.emit(
        "done",
        steps=total_steps,
        **(losses or {}),
        seconds=round(time.monotonic() - started, 3),
        checkpoint=str(final.path),
        sha256=final.sha256,
        seq_first=prepared.seq_first,
        seq_last=prepared.seq_last,
        cuda_graph={"enabled": step.graph_enabled, "why": step.graph_why},
        gpu_util_median=report.gpu_median(),
    )


def _start_fields(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    total_steps: int,
    start_step: int,
) -> dict[str, Any]:
    return {
        "job_id": spec.job_id,
        "config": spec.config,
        "games": len(spec.games),
        "usable_games": len(spec.games) - len(prepared.missing) - len(prepared.rejected),
        "missing_games": len(prepared.missing),
        "missing": [{"seq": m.seq, "reason": m.reason} for m in prepared.missing[:EXAMPLES]],
        "rejected_games": len(prepared.rejected),
        "rejected": [
            {"seq": spec.games[i].seq, "reason": why} for i, why in prepared.rejected[:EXAMPLES]
        ],
        "new_games": prepared.new_games,
        "encoded_games": prepared.encoded,
        "cached_games": prepared.cached,
        "samples": prepared.window.size,
        "new_samples": prepared.new_samples,
        "steps": total_steps,
        "start_step": start_step,
        "batch_size": spec.hyper.batch_size,
        "encoder": {"name": encoder.name, "version": encoder.version, **geometry.as_dict()},
    }


def _report_finished(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    prepared: Prepared,
    final: Path,
    payload: dict[str, Any],
    events: Events,
    started: float,
    device: torch.device,
) -> None:
    meta = payload["meta"]
    total = int(payload["resume"]["total_steps"])
    already = "already trained: its final checkpoint is there"
    events.emit(
        "start",
        **_start_fields(spec, encoder, geometry, prepared, total, total),
        device=str(device),
        amp=None,
        loader={"tier": None, "why": already},
        cuda_graph={"enabled": False, "why": already},
        model=meta["model"],
        resumed_from=str(final),
        init_checkpoint=None,
    )
    events.emit(
        "done",
        steps=total,
        **(meta.get("losses") or {}),
        seconds=round(time.monotonic() - started, 3),
        checkpoint=str(final),
        sha256=file_sha256(final),
        seq_first=meta.get("seq_first"),
        seq_last=meta.get("seq_last"),
        cuda_graph={"enabled": False, "why": already},
        gpu_util_median=None,
    )


class _Reporter:
    """Progress events, TensorBoard scalars and GPU utilisation, every log_every steps.

    Reading the loss sums is the loop's only wait for the device, once per report.
    """

    def __init__(
        self,
        events: Events,
        scalars: Scalars,
        sampler: UtilizationSampler | None,
        total_steps: int,
        batch_size: int,
    ) -> None:
        self._events = events
        self._scalars = scalars
        self._sampler = sampler
        self._total = total_steps
        self._batch = batch_size
        self._since, self._since_step = time.monotonic(), 0

    def __enter__(self) -> _Reporter:
        if self._sampler:
            self._sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampler:
            self._sampler.__exit__()
        self._scalars.close()

    def begin(self, step: int) -> None:
        self._since, self._since_step = time.monotonic(), step

    def progress(self, step: TrainStep, done: int, lr: float) -> dict[str, float]:
        metrics = step.read_metrics()
        assert metrics is not None
        now = time.monotonic()
        rate = (done - self._since_step) * self._batch / max(now - self._since, 1e-9)
        eta = (self._total - done) * self._batch / rate if rate > 0 else None
        gpu = self._sampler.latest() if self._sampler else None
        self._events.emit(
            "progress",
            step=done,
            total_steps=self._total,
            **metrics.as_dict(),
            lr=lr,
            samples_per_s=round(rate, 1),
            eta_s=round(eta, 1) if eta is not None else None,
            gpu_util=gpu,
            cuda_graph=step.graph_enabled,
        )
        for name, value in metrics.as_dict().items():
            self._scalars.add(f"train/{name}", value, done)
        self._scalars.add("train/lr", lr, done)
        self._scalars.add("speed/samples_per_s", rate, done)
        if gpu is not None:
            self._scalars.add("speed/gpu_utilization", float(gpu), done)
        self._since, self._since_step = now, done
        return metrics.as_dict()

    def gpu_median(self) -> float | None:
        return self._sampler.median() if self._sampler else None


def _gpu_sampler(device: torch.device) -> UtilizationSampler | None:
    if device.type != "cuda":
        return None
    reader = utilization_reader(device.index or 0, _pci_bus_id(device))
    return UtilizationSampler(reader) if reader else None


def resolve_device(requested: str) -> torch.device:
    """``auto``: the current CUDA device if there is one, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise JobFailed(ExitCode.BAD_SPEC, f"device {requested!r}: CUDA is not available here")
    device = torch.device("cuda" if requested == "auto" else requested)
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


def _pci_bus_id(device: torch.device) -> str | None:
    props = torch.cuda.get_device_properties(device)
    bus, dev, domain = (getattr(props, f"pci_{k}_id", None) for k in ("bus", "device", "domain"))
    if bus is None or dev is None or domain is None:
        return None
    return f"{domain:08X}:{bus:02X}:{dev:02X}.0"


def _find_resume(out: Path, fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
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
        return path, payload
    return None


def _warm_start(model: PolicyValueNet, path: Path, encoder: Encoder, geometry: Geometry) -> None:
    """Load the weights of ``path`` into ``model``; JobFailed(BAD_CHECKPOINT) if they do not fit."""
    try:
        payload = load_checkpoint(path)
    except CheckpointError as e:
        raise JobFailed(ExitCode.BAD_CHECKPOINT, str(e)) from e
    meta = payload["meta"]
    theirs = meta.get("encoder", {})
    if (theirs.get("name"), theirs.get("version")) != (encoder.name, encoder.version):
        raise JobFailed(
            ExitCode.BAD_CHECKPOINT,
            f"{path}: trained with encoder {theirs.get('name')} v{theirs.get('version')}, "
            f"this job encodes with {encoder.name} v{encoder.version}",
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

    def at(self, step: int, losses: dict[str, float] | None) -> dict[str, Any]:
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


class _Checkpoints:
    """Saves this job's checkpoints in its output folder and reports each one."""

    def __init__(self, out: Path, meta: _Meta, events: Events) -> None:
        self._out = out
        self._meta = meta
        self._events = events

    def save(
        self,
        name: str,
        model: PolicyValueNet,
        optimizer: torch.optim.Optimizer,
        step: int,
        losses: dict[str, float] | None,
    ) -> Saved:
        meta = self._meta
        saved = save_checkpoint(
            self._out / name,
            meta=meta.at(step, losses),
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            resume={"fingerprint": meta.fingerprint, "step": step, "total_steps": meta.total_steps},
        )
        log.info("checkpoint %s at step %d (sha256 %s)", saved.path, step, saved.sha256[:12])
        kind = "final" if name == FINAL else "resume"
        self._events.emit(
            "checkpoint", path=str(saved.path), sha256=saved.sha256, step=step, kind=kind
        )
        return saved

    def remove(self, name: str) -> None:
        (self._out / name).unlink(missing_ok=True)
        (self._out / name).with_suffix(".json").unlink(missing_ok=True)
