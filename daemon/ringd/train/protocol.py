"""What the job tells its parent: exit codes and JSON-lines events on stdout (torch-free).

Stdout carries only events, one JSON object per line, each flushed as soon as it is
written; human-readable logs go to stderr. Every event has ``event`` (its type) and
``time`` (Unix seconds). The event models below are the one contract of both sides:
the trainer emits them (:class:`Events`), the daemon reads them (:func:`parse_event`),
and docs/training-job.md describes their fields.

Compatibility: extra fields are kept, never refused, so a newer trainer, an older one
or a site's own ``training.command`` still parses. A field is required only where its
event means nothing without it (a progress event's ``step``; a checkpoint's ``path``
and ``sha256``; an error's ``kind`` and ``message``); every other field may be left
out and reads as None. The ringd trainer sends every field (tests/train checks it).
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from typing import IO, Annotated, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class ExitCode(enum.IntEnum):
    """The job's exit status; each failure has its own so the daemon can react to it."""

    OK = 0
    INTERNAL = 1  # a bug or an unexpected failure; the traceback is on stderr
    BAD_SPEC = 2  # the spec file is unreadable or invalid (or names an unknown encoder/board)
    NO_GAMES = 3  # no game of the window could be used (all missing or unencodable)
    GPU_OOM = 4  # out of GPU memory: retry with a smaller batch, model or loader budget
    INTERRUPTED = 5  # SIGTERM/SIGINT; a resumable checkpoint was saved when training had begun
    BAD_CHECKPOINT = 6  # init_checkpoint is corrupt, unreadable or does not fit the model
    DISTRIBUTED = 7  # several processes: another rank died, or a collective timed out


ERROR_KINDS: Final[dict[ExitCode, str]] = {
    ExitCode.INTERNAL: "internal",
    ExitCode.BAD_SPEC: "bad_spec",
    ExitCode.NO_GAMES: "no_games",
    ExitCode.GPU_OOM: "out_of_memory",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.BAD_CHECKPOINT: "bad_checkpoint",
    ExitCode.DISTRIBUTED: "distributed",
}

EVENT_TYPES: Final = ("start", "progress", "checkpoint", "done", "error")

# Measurements sent as the trainer has them: an int stays an int on the wire (a
# `float` field would turn a GPU utilisation of 40 into 40.0).
Number: TypeAlias = int | float


class _Part(BaseModel):
    # extra="allow": see the module docstring. Non-finite floats are written as null
    # (JSON has no NaN): a diverged loss reads as null, not as an invalid line.
    model_config = ConfigDict(extra="allow", frozen=True, ser_json_inf_nan="null")


class SkippedGame(_Part):
    """A game of the window not trained on: missing, or rejected by the encoder."""

    seq: int
    reason: str


class LoaderChoice(_Part):
    """The loader tier (``resident``, ``pinned``, ``mmap``; None: nothing to load) and why."""

    tier: str | None
    why: str


class GraphStatus(_Part):
    """Whether the step is (or was) one CUDA graph, and why not."""

    enabled: bool
    why: str


class CompileStatus(_Part):
    """Whether the model is (or was) compiled with torch.compile, why not, and how long it took.

    ``seconds``: the first step's wall time, compiling included (None before it ran).
    """

    enabled: bool
    why: str
    seconds: float | None = None


class DistributedInfo(_Part):
    """One job over several processes (torchrun + DDP): how many, and over what."""

    world_size: int
    backend: str  # "nccl" (GPUs) or "gloo" (CPU)
    local_world_size: int | None = None  # processes on this host


class EncoderInfo(_Part):
    name: str
    version: int
    board: str
    players: int
    planes: int
    height: int
    width: int


class ModelInfo(_Part):
    """The network's shape; ``parameters`` is absent when a finished job is reported again."""

    planes: int
    height: int
    width: int
    channels: int
    blocks: int
    parameters: int | None = None


class HeldOutMetrics(_Part):
    """One model on the held-out samples (a value is None where it was not finite)."""

    loss: float | None = None  # policy_loss + value_mse: what training minimises
    policy_loss: float | None = None  # cross-entropy of the policy
    policy_acc: float | None = None  # top-1 accuracy of the policy
    value_mse: float | None = None  # mean squared error of the value


class HeldOutEval(_Part):
    """A checkpoint's evaluation on the configuration's held-out games (never trained on).

    ``model`` is the network being trained, at ``step``; ``start`` the network the job
    started from, on the same samples: the warm start ``start_checkpoint``, or (null
    there) the untrained network of the job's seed. Either is None without held-out
    samples, and ``model`` also in a checkpoint saved on a stop (not evaluated).
    """

    step: int | None = None
    games: int | None = None  # held-out games evaluated (readable and encodable)
    samples: int | None = None
    model: HeldOutMetrics | None = None
    start: HeldOutMetrics | None = None
    start_checkpoint: str | None = None
    seconds: float | None = None  # evaluating `model` took this long


class _Event(_Part):
    # Declared here so that every line starts with its type and time (subclasses
    # narrow `event` to their Literal; a field keeps its place when overridden).
    event: str
    time: float | None = None  # Unix seconds; Events.emit stamps it


class _Losses(_Event):
    """Averages over the steps of the last interval (None: not finite, or not sent)."""

    loss: float | None = None
    policy_loss: float | None = None
    value_loss: float | None = None
    policy_acc: float | None = None


class StartEvent(_Event):
    """Once, before the first step: the window, the plan, and what it runs on."""

    event: Literal["start"] = "start"
    job_id: str | None = None
    config: str | None = None
    games: int | None = None
    usable_games: int | None = None
    missing_games: int | None = None
    missing: list[SkippedGame] | None = None  # the first few
    rejected_games: int | None = None
    rejected: list[SkippedGame] | None = None  # the first few
    new_games: int | None = None
    # New games of the job older than its window (a backlog over max_games): not trained on.
    skipped_games: int | None = None
    encoded_games: int | None = None
    cached_games: int | None = None
    samples: int | None = None
    new_samples: int | None = None
    steps: int | None = None
    start_step: int | None = None
    batch_size: int | None = None
    encoder: EncoderInfo | None = None
    device: str | None = None
    amp: str | None = None  # e.g. "bfloat16"; None: float32
    loader: LoaderChoice | None = None
    cuda_graph: GraphStatus | None = None
    compile: CompileStatus | None = None
    distributed: DistributedInfo | None = None  # None: one process
    model: ModelInfo | None = None
    resumed_from: str | None = None
    init_checkpoint: str | None = None


class ProgressEvent(_Losses):
    """Every ``log_every`` steps and after the last."""

    event: Literal["progress"] = "progress"
    step: int  # steps done
    total_steps: int | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    gpu_util: Number | None = None  # percent; None off CUDA or without NVML
    cuda_graph: bool | None = None  # False once a failed capture fell back to eager
    compiled: bool | None = None  # False once a failed compile fell back to the plain model


class CheckpointEvent(_Event):
    """Each checkpoint written; ``sha256`` is of the file's bytes."""

    event: Literal["checkpoint"] = "checkpoint"
    path: str
    sha256: str
    step: int | None = None
    kind: str | None = None  # ringd writes "resume" and "final"
    eval: HeldOutEval | None = None  # held-out metrics (None: not evaluated)


class DoneEvent(_Losses):
    """Once, the last line of a successful run (exit 0)."""

    event: Literal["done"] = "done"
    steps: int | None = None
    seconds: float | None = None  # this run's wall time
    checkpoint: str | None = None  # the final checkpoint's path
    sha256: str | None = None
    seq_first: int | None = None
    seq_last: int | None = None
    cuda_graph: GraphStatus | None = None
    compile: CompileStatus | None = None
    gpu_util_median: Number | None = None
    eval: HeldOutEval | None = None  # the final checkpoint's held-out metrics


class ErrorEvent(_Event):
    """Once, the last line of a failed run."""

    event: Literal["error"] = "error"
    kind: str  # ringd's are the values of ERROR_KINDS; other trainers may send others
    message: str
    exit_code: int | None = None


TrainerEvent: TypeAlias = Annotated[
    StartEvent | ProgressEvent | CheckpointEvent | DoneEvent | ErrorEvent,
    Field(discriminator="event"),
]
_EVENT: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)


class ProtocolError(ValueError):
    """A line of a known event type whose fields break the protocol (a trainer's bug)."""


def parse_event(line: bytes | str) -> TrainerEvent | None:
    """The event on one stdout line; None if the line is not a protocol event.

    Not a protocol event: not JSON, not a JSON object, or no known ``event`` type
    (a trainer may print other things; the daemon keeps them in events.jsonl). A
    known type with a missing required field or a field of the wrong type raises
    :class:`ProtocolError`, naming the fields.
    """
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(record, dict) or record.get("event") not in EVENT_TYPES:
        return None
    try:
        return _EVENT.validate_python(record)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or '(event)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ProtocolError(f"{record['event']} event: {problems}") from e


class JobFailed(Exception):
    """A failure with its exit code; the job reports it as one ``error`` event."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StopFlag:
    """Set by the SIGTERM/SIGINT handler; the job polls it between tasks and steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def set(self, name: str) -> None:
        self.signal = self.signal or name

    def __call__(self) -> bool:
        return self.signal is not None


class Events:
    """Writes events as JSON lines to ``stream`` (stdout by default), one flush each.

    If the reader goes away (the daemon died), events are dropped and the job carries
    on: finishing and checkpointing is more useful than dying of a broken pipe.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._closed = False

    def emit(self, event: TrainerEvent) -> None:
        """Write ``event`` (validated when it was built), stamped with the time if unset."""
        if self._closed:
            return
        if event.time is None:
            event = event.model_copy(update={"time": round(time.time(), 3)})
        try:
            self._stream.write(event.model_dump_json() + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self._closed = True
            if self._stream is sys.stdout:
                # Point fd 1 at /dev/null so the interpreter's final flush cannot fail.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def error(self, failure: JobFailed) -> None:
        """The ``error`` event of ``failure``: its kind, message and exit code."""
        self.emit(
            ErrorEvent(
                kind=ERROR_KINDS[failure.code],
                message=failure.message,
                exit_code=int(failure.code),
            )
        )
