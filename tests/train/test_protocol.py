"""The trainer's events: what the trainer emits is what the daemon's parser accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainkit import Captured, SpecFactory, run_in_process

from ringd.train.job import run_job
from ringd.train.protocol import (
    EVENT_TYPES,
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    ExitCode,
    ProgressEvent,
    ProtocolError,
    StartEvent,
    StopFlag,
    parse_event,
)

MODELS = {
    "start": StartEvent,
    "progress": ProgressEvent,
    "checkpoint": CheckpointEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}


class _StopAtFirstProgress(StopFlag):
    """A SIGTERM as the daemon sends it, arriving once the job has reported progress."""

    def __init__(self, captured: Captured) -> None:
        super().__init__()
        self._captured = captured

    def __call__(self) -> bool:
        if self.signal is None and self._captured.of("progress"):
            self.set("SIGTERM")
        return super().__call__()


def test_every_event_of_a_real_run_parses(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    # Every kind of line the trainer writes: interrupted (periodic and stop checkpoints,
    # an error), resumed to the end (final checkpoint, done), and rerun once finished.
    hyper = {"steps": 12, "log_every": 5, "checkpoint_every_s": 1e-9}
    spec = make_spec(square8_corpus[:20], hyper=hyper)
    stopped = Captured()
    assert run_job(spec, stopped.events, _StopAtFirstProgress(stopped), workers=1) == 5
    code, resumed = run_in_process(spec)
    assert code == ExitCode.OK, resumed.all()
    code, rerun = run_in_process(spec)
    assert code == ExitCode.OK and rerun.of("progress") == []

    lines = [
        line for run in (stopped, resumed, rerun) for line in run.stream.getvalue().splitlines()
    ]
    kinds = set()
    for line in lines:
        # Captured.all() (trainkit.checked_event) has checked that each sets every field
        # of its model and no other; here: the daemon's parser types it.
        event = parse_event(line.encode())
        assert isinstance(event, MODELS[json.loads(line)["event"]]), line
        kinds.add(event.event)
    assert kinds == set(EVENT_TYPES) == set(MODELS)
    checkpoints = [e for e in resumed.all() + stopped.all() if e["event"] == "checkpoint"]
    assert {e["kind"] for e in checkpoints} == {"resume", "final"}
    assert stopped.one("error")["kind"] == "interrupted"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"loading...",
        b"[1, 2]",
        b'"start"',
        b"{}",
        b'{"event": "finished"}',
        b'{"event": 3}',
        b'{"event": "start", "note": "\xff"}',  # not UTF-8
    ],
)
def test_a_line_that_is_not_a_protocol_event_is_none(line: bytes) -> None:
    assert parse_event(line) is None


def test_another_trainer_with_fewer_and_more_fields_still_parses() -> None:
    # As a site's `training.command` (or tests/fake_trainer.py) writes them: no time,
    # few fields, its own error kinds, and fields of its own.
    lines = [
        {"event": "start", "config": "square8_2p", "games": 12, "resumed": False},
        {"event": "progress", "step": 3, "total_steps": 10, "loss": 0.5, "eta_s": 1},
        {"event": "checkpoint", "path": "/m/model.pt", "sha256": "ab" * 32, "step": 10},
        {"event": "done", "steps": 10, "checkpoint": "/m/model.pt", "seconds": 0.5},
        {"event": "error", "kind": "no_usable_games", "message": "every key mismatched"},
    ]
    parsed = [parse_event(json.dumps(line) + "\n") for line in lines]
    start, progress, checkpoint, done, error = parsed
    assert isinstance(start, StartEvent) and start.games == 12 and start.job_id is None
    assert start.model_extra == {"resumed": False} and start.time is None
    assert isinstance(progress, ProgressEvent) and (progress.step, progress.lr) == (3, None)
    assert isinstance(checkpoint, CheckpointEvent) and checkpoint.kind is None
    assert isinstance(done, DoneEvent) and done.checkpoint == "/m/model.pt"
    assert isinstance(error, ErrorEvent) and error.kind == "no_usable_games"
    assert error.exit_code is None


def test_a_diverged_loss_is_null_and_parses() -> None:
    captured = Captured()
    captured.events.emit(ProgressEvent(step=1, total_steps=2, loss=float("inf")))
    event = parse_event(captured.stream.getvalue())
    assert isinstance(event, ProgressEvent) and event.loss is None and event.time is not None


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ({"event": "progress", "total_steps": 4}, "progress event: step: Field required"),
        ({"event": "progress", "step": "three"}, "step: Input should be a valid integer"),
        ({"event": "checkpoint", "path": "/m.pt"}, "checkpoint event: sha256: Field required"),
        ({"event": "error", "kind": "internal"}, "message: Field required"),
        ({"event": "start", "cuda_graph": {"why": "x"}}, "cuda_graph.enabled: Field required"),
    ],
)
def test_a_known_event_that_breaks_the_protocol_is_an_error(
    line: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse_event(json.dumps(line).encode())


def test_the_event_models_are_those_of_the_docs() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/training-job.md").read_text()
    for kind, model in MODELS.items():
        assert f"`{kind}`" in doc
        for field in set(model.model_fields) - {"event", "time"}:
            assert f"`{field}`" in doc, (kind, field)
