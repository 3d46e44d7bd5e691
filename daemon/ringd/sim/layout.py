"""Where simulated files go: the folder shapes of RingRift's data/selfplay, and their dialects."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from ringd.sim.records import Dialect

# Directory shapes seen under RingRift's data/selfplay, plus a few no tool expects:
# ingest must count every *.jsonl however its folder is named.
_HOSTS = ("gh200-a", "gh200-b", "lambda-h100-3", "vast-4090-17", "node07")
_ODD_DIRS = (
    "Old Runs (2025-12)",
    "ünïcødé-runs",
    "deep/er/and/deeper/still",
    "-leading-dash",
    "tmp.d",
    "with space/..dots..",
)
DirKind = Literal["gpu", "mcts", "hybrid", "daemon", "cluster", "odd"]
DIR_KINDS: tuple[DirKind, ...] = ("gpu", "mcts", "hybrid", "daemon", "cluster", "odd")
DIR_WEIGHTS = (25, 15, 15, 15, 20, 10)


def corpus_dir(rng: random.Random, kind: DirKind, label: str) -> Path:
    """A corpus file's folder (relative to the root) of ``kind``; ``label`` names gpu folders."""
    k = rng.randint(1, 6)
    if kind == "gpu":
        return Path("gpu") / label
    if kind == "cluster":
        return Path(f"cluster_{k}") / rng.choice(_HOSTS)
    if kind == "odd":
        return Path(rng.choice(_ODD_DIRS))
    return Path(f"{kind}_{k}")


def writer_dir(index: int) -> tuple[DirKind, Path, str]:
    """Live writer ``index``'s folder kind, folder (relative to the root) and file stem."""
    kind = DIR_KINDS[index % len(DIR_KINDS)]
    if kind == "gpu":
        return kind, Path("gpu"), f"selfplay_w{index:03d}"
    if kind == "cluster":
        return kind, Path(f"cluster_{index % 3}") / _HOSTS[index % len(_HOSTS)], f"w{index:03d}"
    if kind == "odd":
        return kind, Path(_ODD_DIRS[index % len(_ODD_DIRS)]), f"w{index:03d}"
    return kind, Path(f"{kind}_{index}"), "games"


def dialect_for(kind: DirKind, dialect: str) -> Dialect | None:
    """The dialect a directory's files use; None means mixed line by line."""
    if dialect == "camel":
        return "camel"
    if dialect == "snake" or kind == "gpu":
        return "snake"
    if kind in ("mcts", "daemon"):
        return "camel"
    return None
