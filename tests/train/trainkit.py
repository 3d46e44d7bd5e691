"""Helpers for the training job's tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringd.records import game_key
from ringd.sim import game_line, make_record
from ringd.train.protocol import Events, parse_event

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared/fixtures/ringrift-golden"

# Small enough that a job trains in a second or two on two CPU cores.
TINY_HYPER: dict[str, Any] = {
    "batch_size": 32,
    "channels": 8,
    "blocks": 1,
    "log_every": 5,
    "warmup_steps": 5,
}


SpecFactory = Callable[..., Path]  # the make_spec fixture: (games, **fields) -> spec path


def spans_of(paths: list[Path], first_seq: int = 1) -> list[dict[str, Any]]:
    """Every line of ``paths`` as a spec game (path, offset, length, key, seq), in order."""
    games: list[dict[str, Any]] = []
    seq = first_seq
    for path in paths:
        offset = 0
        for line in path.read_bytes().split(b"\n")[:-1]:
            games.append(
                {
                    "path": str(path),
                    "offset": offset,
                    "length": len(line),
                    "key": game_key(line).hex(),
                    "seq": seq,
                }
            )
            offset += len(line) + 1
            seq += 1
    return games


def write_games(path: Path, config: str, n: int, seed: int) -> Path:
    """``n`` real-sized simulator games of ``config``, both dialects, one file."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i in range(n):
            dialect = "camel" if i % 2 == 0 else "snake"
            f.write(game_line(make_record(rng, config, dialect, f"{seed}-{i}")))
    return path


class Captured:
    """Events written by a job run in this process."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.events = Events(self.stream)

    def all(self) -> list[dict[str, Any]]:
        return parse_events(self.stream.getvalue())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["event"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind} event, got {self.all()}"
        return found[0]


def run_in_process(spec: Path) -> tuple[int, Captured]:
    """Run a job here (no signal handlers, one encoding process); its exit code and events."""
    from ringd.train.job import run_job
    from ringd.train.protocol import StopFlag

    captured = Captured()
    code = run_job(spec, captured.events, StopFlag(), workers=1)
    return int(code), captured


def job_process(spec: Path) -> subprocess.Popen[str]:
    """``python -m ringd.train SPEC`` as the daemon starts it: events on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "ringd.train", str(spec), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """The job's events as dicts, each checked against the protocol (:func:`checked_event`)."""
    return [checked_event(line) for line in stdout.splitlines()]


def checked_event(line: str) -> dict[str, Any]:
    """One line of the ringd trainer's stdout, which must be exactly a protocol event.

    It parses with the daemon's parser, sets every field its model declares, adds none
    (so the models, the trainer and docs/training-job.md agree), and reads back as written.
    """
    event = parse_event(line)
    assert event is not None, f"not a protocol event: {line}"
    assert event.model_extra == {}, f"fields outside the protocol: {event.model_extra}"
    unset = set(type(event).model_fields) - event.model_fields_set
    assert not unset, f"{event.event} event without {sorted(unset)}"
    record: dict[str, Any] = json.loads(line)
    assert event.model_dump(mode="json") == record
    return record
