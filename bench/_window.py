"""Shared by bench/loader.py and bench/train.py: a cached window of simulator games, and
the old pipeline's per-sample batch building (the baseline both compare against)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ringd.records import game_key
from ringd.sim import write_corpus
from ringd.train.data import HostBatch
from ringd.train.encode import Geometry
from ringd.train.grid import GridEncoder
from ringd.train.job import read_spec
from ringd.train.prepare import Prepared, prepare_window

GAMES_PER_FILE = 50


def spans(files: list[Path]) -> list[dict[str, Any]]:
    games: list[dict[str, Any]] = []
    for path in files:
        offset = 0
        for line in path.read_bytes().split(b"\n")[:-1]:
            key = game_key(line).hex()
            games.append(
                {
                    "path": str(path),
                    "offset": offset,
                    "length": len(line),
                    "key": key,
                    "seq": len(games) + 1,
                }
            )
            offset += len(line) + 1
    return games


def corpus(folder: Path, config: str, games: int) -> list[dict[str, Any]]:
    """``games`` simulator games of ``config`` under ``folder`` (written once, then reused)."""
    marker = folder / f"{config}-{games}.json"
    if marker.exists():
        cached: list[dict[str, Any]] = json.loads(marker.read_text())
        return cached
    print(f"writing {games} {config} games under {folder} ...", flush=True)
    files = max(1, games // GAMES_PER_FILE)
    info = write_corpus(
        folder / f"{config}-{games}",
        files,
        games // files,
        seed=1,
        configs=[config],
        dialect="mixed",
    )
    result = spans(info.files)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result))
    return result


def write_spec(
    path: Path, config: str, games: list[dict[str, Any]], folder: Path, **fields: Any
) -> Path:
    board, players = config.rsplit("_", 1)
    spec = {
        "version": 1,
        "job_id": f"bench-{config}",
        "config": config,
        "board": board,
        "players": int(players[:-1]),
        "games": games,
        "new_from_seq": 1,
        "output_dir": str(folder / "job"),
        "samples_dir": str(folder / "samples"),
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def prepared_window(
    folder: Path, config: str, games: int
) -> tuple[Prepared, Geometry, list[dict[str, Any]]]:
    """The window of a corpus, encoded into the sample cache under ``folder`` (once)."""
    spans_ = corpus(folder, config, games)
    spec = read_spec(write_spec(folder / "prepare.json", config, spans_, folder))
    encoder = GridEncoder()
    geometry = encoder.geometry(spec.board, spec.players)
    t0 = time.perf_counter()
    prepared = prepare_window(spec, encoder, geometry, stop=lambda: False)
    if prepared.encoded:
        print(f"encoded {prepared.encoded} games in {time.perf_counter() - t0:.1f} s", flush=True)
    return prepared, geometry, spans_


def host_arrays(prepared: Prepared) -> HostBatch:
    out = HostBatch.empty(prepared.window.size, prepared.window.geometry)
    prepared.window.materialize(out)
    return out


class PerSample(torch.utils.data.Dataset[tuple[torch.Tensor, int, float]]):
    """The old pipeline's way: each sample decoded and turned into tensors on its own."""

    def __init__(self, arrays: HostBatch, geometry: Geometry) -> None:
        self.arrays = arrays
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.arrays.policy)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, float]:
        g = self.geometry
        bits = np.unpackbits(self.arrays.planes[i])[: g.planes * g.cells]
        planes = torch.from_numpy(bits.reshape(g.planes, g.height, g.width).astype(np.float32))
        return planes, int(self.arrays.policy[i]), float(self.arrays.value[i])

    def get_batch(
        self, indices: np.ndarray[Any, Any], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch built by a Python loop over its samples, then moved to ``device``."""
        xs, ps, vs = zip(*(self[int(i)] for i in indices), strict=True)
        return (
            torch.stack(xs).to(device),
            torch.tensor(ps, dtype=torch.int64).to(device),
            torch.tensor(vs, dtype=torch.float32).to(device),
        )
