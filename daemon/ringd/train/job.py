"""``python -m ringd.train SPEC.json``: the training job as a program.

Stages: read the spec, load the encoder, bring the window and the held-out games
into the sample cache (no torch yet: the encoding pool's processes start light), then train
(:mod:`ringd.train.loop`). Every failure ends as one ``error`` event and its exit
code (:class:`~ringd.train.protocol.ExitCode`); human-readable logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ringd.train.cache import CacheError
from ringd.train.encode import Encoder, Geometry, UnknownEncoder, UnsupportedBoard, load_encoder
from ringd.train.launch import die_with_launcher, env_rank, launched_by_torchrun
from ringd.train.prepare import Prepared, prepare_holdout, prepare_window
from ringd.train.protocol import Events, ExitCode, JobFailed, StopFlag
from ringd.train.spec import JobSpec, SpecError, load_spec

log = logging.getLogger("ringd.train")


def run_job(
    spec_path: Path, events: Events, stop: StopFlag, *, workers: int | None = None
) -> ExitCode:
    """Run the job of ``spec_path``, reporting to ``events``; returns the exit code."""
    started = time.monotonic()
    try:
        spec = read_spec(spec_path)
        encoder, geometry = _encoder(spec)
        # torch takes seconds to import: do it while the window is looked up and its new
        # games are encoded (in worker processes of their own, which never import it).
        threading.Thread(target=_import_trainer, name="import-torch").start()
        prepared = prepare_window(spec, encoder, geometry, stop=stop, workers=workers)
        if prepared.window.size == 0:
            raise JobFailed(ExitCode.NO_GAMES, _no_games(spec, prepared))
        holdout = prepare_holdout(spec, encoder, geometry, stop=stop, workers=workers)
        from ringd.train.loop import train  # torch is imported from here on

        train(
            spec,
            encoder,
            geometry,
            prepared,
            events=events,
            stop=stop,
            started=started,
            holdout=holdout,
        )
        return ExitCode.OK
    except JobFailed as failure:
        log.error("%s", failure.message)
        events.error(failure)
        return failure.code
    except CacheError as e:
        events.error(JobFailed(ExitCode.INTERNAL, f"sample cache: {e}"))
        return ExitCode.INTERNAL
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        events.error(JobFailed(ExitCode.INTERNAL, f"{type(e).__name__}: {e}"))
        return ExitCode.INTERNAL


def _import_trainer() -> None:
    # torch, then what a torch optimizer's first constructor imports (a second more).
    for module in ("ringd.train.loop", "torch._dynamo"):
        with contextlib.suppress(Exception):  # the main thread's import reports it
            importlib.import_module(module)


def read_spec(path: Path) -> JobSpec:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise JobFailed(ExitCode.BAD_SPEC, f"{path}: {e.strerror or e}") from e
    try:
        return load_spec(text)
    except SpecError as e:
        raise JobFailed(ExitCode.BAD_SPEC, f"{path}: {e}") from e


def _encoder(spec: JobSpec) -> tuple[Encoder, Geometry]:
    try:
        encoder = load_encoder(spec.encoder)
        return encoder, encoder.geometry(spec.board, spec.players)
    except (UnknownEncoder, UnsupportedBoard) as e:
        raise JobFailed(ExitCode.BAD_SPEC, f"encoder {spec.encoder!r}: {e}") from e


def _no_games(spec: JobSpec, prepared: Prepared) -> str:
    parts = [f"none of the {prepared.games} games of the window is usable"]
    if prepared.missing:
        reasons = sorted({m.reason.split(":")[0] for m in prepared.missing})
        parts.append(f"{len(prepared.missing)} missing ({', '.join(reasons)})")
    if prepared.rejected:
        parts.append(
            f"{len(prepared.rejected)} rejected by the encoder (first: {prepared.rejected[0][1]})"
        )
    if not prepared.games:
        parts.append("the spec lists no games")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ringd.train",
        description="Train one configuration's network on the games of a job spec. "
        "Events go to stdout as JSON lines, logs to stderr; see docs/training-job.md.",
    )
    parser.add_argument("spec", type=Path, help="the job spec (JSON)")
    parser.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: all cores)"
    )
    args = parser.parse_args(argv)
    # Under torchrun every rank runs this; rank 0 alone writes events on stdout.
    die_with_launcher()
    rank = env_rank()
    where = f" [rank {rank}]" if launched_by_torchrun() else ""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s",
    )
    events = Events() if rank == 0 else Events(open(os.devnull, "w"))  # noqa: SIM115
    stop = StopFlag()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not stop():
            log.warning("%s: stopping (with a resumable checkpoint once training has begun)", name)
        stop.set(name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return int(run_job(args.spec, events, stop, workers=args.workers))
