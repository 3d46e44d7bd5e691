"""Fixtures for the training job's tests: simulator corpora, spans as the ledger records
them, job specs, and the RingRift golden records from ../shared."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainkit import GOLDEN, TINY_HYPER, Captured, SpecFactory, spans_of, write_games

from ringd.sim import write_corpus


@pytest.fixture
def golden() -> list[dict[str, Any]]:
    """The golden RingRift records (name -> record), or a skip saying where they should be."""
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not present at {GOLDEN} (they live in the shared/ folder)")
    return [
        {"name": p.name, "record": json.loads(p.read_text())} for p in sorted(GOLDEN.glob("*.json"))
    ]


@pytest.fixture(scope="session")
def square8_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """120 square8_2p games in 3 files, as spec games (seq 1..120)."""
    root = tmp_path_factory.mktemp("corpus")
    info = write_corpus(root, 3, 40, seed=7, configs=["square8_2p"], dialect="mixed")
    return spans_of(info.files)


@pytest.fixture(scope="session")
def heldout_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Other square8_2p games (another seed), for measuring a model on unseen positions."""
    root = tmp_path_factory.mktemp("heldout")
    return [write_games(root / "heldout.jsonl", "square8_2p", 24, seed=99)]


@pytest.fixture
def make_spec(tmp_path: Path) -> SpecFactory:
    """Write a job spec for square8_2p under tmp_path; keyword arguments override fields."""

    def make(games: list[dict[str, Any]], **fields: Any) -> Path:
        hyper = {**TINY_HYPER, **fields.pop("hyper", {})}
        spec: dict[str, Any] = {
            "version": 1,
            "job_id": "square8_2p-000001",
            "config": "square8_2p",
            "board": "square8",
            "players": 2,
            "encoder": "grid",
            "games": games,
            "new_from_seq": games[len(games) // 2]["seq"] if games else 0,
            "output_dir": str(tmp_path / "job"),
            "samples_dir": str(tmp_path / "samples"),
            "init_checkpoint": None,
            "device": "cpu",
            "seed": 0,
            "hyper": hyper,
        }
        spec.update(fields)
        path = tmp_path / f"spec-{spec['job_id']}.json"
        path.write_text(json.dumps(spec))
        return path

    return make


@pytest.fixture
def captured() -> Iterator[Captured]:
    yield Captured()
