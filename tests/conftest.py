"""Fixtures: real files in temporary trees, golden records from ../shared, daemons."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import GOLDEN, DaemonProcess, write_config


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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path (Unix socket paths hold 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon over short_tmp/data/selfplay (not yet started; call .start())."""
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(short_tmp, extra="")
    process = DaemonProcess(short_tmp)
    yield process
    process.close()
