"""Shared fixtures: real files in temporary trees, golden records from ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "fixtures" / "ringrift-golden"


def game_line(board: str, players: int, i: int, *, dialect: str = "camel", pad: int = 0) -> bytes:
    """A small valid game record as one JSONL line (newline included)."""
    if dialect == "camel":
        record: dict[str, object] = {"id": f"g{i}", "boardType": board, "numPlayers": players}
    else:
        record = {"game_id": f"g{i}", "board_type": board, "num_players": players}
    record["moves"] = [{"to": {"x": i % 8, "y": (i // 8) % 8}}] + [{"pad": "x" * pad}] * bool(pad)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def golden_lines() -> list[bytes]:
    """The five golden RingRift records, each as one compact JSONL line."""
    if not GOLDEN.is_dir():
        pytest.skip(
            f"golden fixtures not present at {GOLDEN} (they live in the project's shared/ folder)"
        )
    return [
        json.dumps(json.loads(p.read_text()), separators=(",", ":")).encode() + b"\n"
        for p in sorted(GOLDEN.glob("*.json"))
    ]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A project folder holding ringd.yaml, data/selfplay and var/ (the state dir)."""
    (tmp_path / "data" / "selfplay").mkdir(parents=True)
    write_config(tmp_path)
    yield tmp_path


def write_config(folder: Path, extra: str = "", configs: str | None = None) -> Path:
    path = folder / "ringd.yaml"
    if configs is None:
        configs = "  square8_2p: {threshold: 10}\n  hex8_2p: {threshold: 5}\n  hexagonal_2p: {threshold: 5}\n"
    path.write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\ntraining:\n  devices: cpu\n"
        + extra
        + "configs:\n"
        + configs
    )
    return path


def ringd(
    *args: str, check: bool = False, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ringd CLI in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ringd.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
