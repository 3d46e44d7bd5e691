"""The job spec: what the daemon asks one training job to do (torch-free).

The daemon's job runner writes a :class:`JobSpec` as JSON and starts
``python -m ringd.train SPEC.json``. Unknown keys are errors, so a typo in the
daemon's YAML ``training.hyper`` or a spec from a newer daemon fails loudly
(exit 2) instead of training with defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ringd.boards import config_name
from ringd.train.holdout import bucket_of, held_out_buckets

SPEC_VERSION = 1

_HEX_KEY = re.compile(r"^[0-9a-f]{32}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def _absolute(path: str) -> str:
    # The job runs in whatever folder the daemon started it from; a relative path
    # would silently mean something else there.
    if not PurePosixPath(path).is_absolute():
        raise ValueError(f"must be an absolute path, got {path!r}")
    return path


AbsPath = Annotated[str, AfterValidator(_absolute)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GameSpan(_Model):
    """Where one game of the window was read: check ``key`` before trusting the bytes."""

    path: AbsPath
    offset: int = Field(ge=0)
    length: int = Field(ge=1, description="bytes of the line, without its newline")
    key: str = Field(description="ringd.records.game_key(line).hex(): 32 lowercase hex digits")
    seq: int = Field(ge=0, description="the ledger's sequence number of the game")

    @model_validator(mode="after")
    def _check_key(self) -> GameSpan:
        if not _HEX_KEY.match(self.key):
            raise ValueError(f"key must be 32 lowercase hex digits, got {self.key!r}")
        return self

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)


class SpansFile(_Model):
    """The window as a spans file (:mod:`ringd.train.spans`), instead of inline ``games``."""

    path: AbsPath
    count: int = Field(ge=0, description="records in the file: games in the window")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the file's bytes")


class Hyper(_Model):
    """Hyperparameters and knobs; every one has a default (the daemon's YAML may override)."""

    batch_size: int = Field(default=256, ge=1)
    steps: int | None = Field(default=None, ge=1, description="fixed steps; None: replay_ratio")
    replay_ratio: float = Field(default=4.0, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    channels: int = Field(default=64, ge=1)
    blocks: int = Field(default=6, ge=0)
    # auto: torch.compile (inductor) on CUDA, eager on a CPU (where compiling costs more
    # than it gains on small nets); true/false force it. A failed compile falls back.
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    cuda_graphs: bool = True
    channels_last: bool = True
    loader: Literal["auto", "resident", "pinned", "mmap"] = "auto"
    prefetch: int = Field(default=4, ge=1)
    gpu_memory_budget_gb: float | None = Field(default=None, gt=0)
    host_memory_budget_gb: float | None = Field(default=None, gt=0)
    checkpoint_every_s: float = Field(default=600.0, gt=0)
    log_every: int = Field(default=10, ge=1)
    # Several processes (torchrun): how long a collective may wait for a missing rank.
    dist_timeout_s: float = Field(default=600.0, gt=0)


class HoldOut(_Model):
    """The configuration's held-out slice (never trained on) and the games to evaluate on."""

    fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="share of games held out by key (0: none)"
    )
    games: list[GameSpan] = Field(
        default_factory=list, description="held-out games each checkpoint is evaluated on"
    )


# Fields of Hyper that change what is trained (the rest change only how fast or how
# it is reported); a resumable checkpoint is only resumed by a spec that agrees on them.
_TRAINING_HYPER = (
    "batch_size",
    "steps",
    "replay_ratio",
    "lr",
    "weight_decay",
    "warmup_steps",
    "channels",
    "blocks",
)


class JobSpec(_Model):
    version: Literal[1]
    job_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    config: str
    board: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    players: int = Field(ge=1, le=8)
    encoder: str = Field(default="grid", min_length=1)
    # The window, oldest first: inline (hand-written specs, small windows) or, as the
    # daemon writes it, a spans file; never both.
    games: list[GameSpan] = Field(default_factory=list, description="the window, oldest first")
    spans: SpansFile | None = None
    new_from_seq: int = Field(ge=0, description="games with seq >= this are new")
    # New games of this job older than its window (a backlog over training.window.max_games):
    # not trained on; reported in the start event.
    skipped_games: int = Field(default=0, ge=0)
    # records.board_aliases of the daemon that counted the games: the trainer keys the
    # lines it reads back with them (None: RingRift's default aliases).
    board_aliases: dict[str, str] | None = None
    output_dir: AbsPath
    samples_dir: AbsPath
    init_checkpoint: AbsPath | None = None
    device: str = "auto"
    seed: int = Field(default=0, ge=0, lt=2**63)
    hyper: Hyper = Field(default_factory=Hyper)
    holdout: HoldOut = Field(default_factory=HoldOut)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        expected = config_name(self.board, self.players)
        if self.config != expected:
            raise ValueError(
                f"config {self.config!r} does not match board {self.board!r} and "
                f"players {self.players} (expected {expected})"
            )
        if not _DEVICE.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.spans is not None and self.games:
            raise ValueError("the window is either games or spans, not both")
        for before, after in zip(self.games, self.games[1:], strict=False):
            if after.seq <= before.seq:
                raise ValueError(
                    f"games must be oldest first with increasing seq; seq {after.seq} "
                    f"follows {before.seq}"
                )
        # The trainer's own check that no held-out game is trained on (the daemon
        # leaves them out of the window): a spec that lists one is refused whole.
        held_out = {g.key for g in self.holdout.games}
        buckets = held_out_buckets(self.holdout.fraction)
        for g in self.games if held_out or buckets else ():
            if g.key in held_out or bucket_of(g.key_bytes) < buckets:
                raise ValueError(
                    f"games: seq {g.seq} (key {g.key}) is a held-out game "
                    f"(holdout.fraction {self.holdout.fraction:g}); no job trains on one"
                )
        return self

    def training_fingerprint(self) -> str:
        """sha256 of what determines the trained weights (not paths, device or speed knobs).

        A resumable checkpoint left by an interrupted run is resumed only by a spec with
        the same fingerprint.
        """
        hyper = self.hyper.model_dump()
        payload = {
            "job_id": self.job_id,
            "config": self.config,
            "encoder": self.encoder,
            "games": [g.key for g in self.games],
            "new_from_seq": self.new_from_seq,
            "init_checkpoint": self.init_checkpoint,
            "seed": self.seed,
            "hyper": {k: hyper[k] for k in _TRAINING_HYPER},
        }
        if self.spans is not None:
            payload["spans"] = self.spans.sha256  # the window's seqs and keys (and spans)
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class SpecError(Exception):
    """The spec file is unreadable or invalid; the message says where and why."""


def load_spec(text: str | bytes) -> JobSpec:
    """Parse and validate a spec; :class:`SpecError` with every problem listed if it is bad."""
    try:
        return JobSpec.model_validate_json(text)
    except ValueError as e:  # pydantic.ValidationError is a ValueError
        errors = getattr(e, "errors", None)
        if errors is None:
            raise SpecError(str(e)) from None
        lines = []
        for err in errors():
            where = ".".join(str(p) for p in err["loc"]) or "(spec)"
            lines.append(f"{where}: {err['msg']}")
        raise SpecError("; ".join(lines)) from None
