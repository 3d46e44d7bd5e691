"""The window as samples, and which samples each training step draws (numpy, no torch).

The window's samples are numbered 0..size-1 in window order (oldest game first, each
game's positions in move order); they live in runs of consecutive rows of the cache's
shards. Every loader tier draws the same samples for a step: the indices are a pure
function of (seed, step) (:func:`batch_indices`), which is also what makes a resumed
job draw exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ringd.train.cache import CacheEntry, ShardArrays
from ringd.train.encode import Geometry

IntArray = npt.NDArray[np.int64]
# Without an explicit budget, the window may take this share of what is free: the
# rest is for activations, the CUDA graph's pool, and (on the host) everything else.
DEFAULT_BUDGET_FRACTION = 0.5


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be used without swapping), else total RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def batch_indices(seed: int, step: int, size: int, batch: int) -> IntArray:
    """The window indices of step ``step``'s batch: uniform, with replacement.

    A fresh generator per step, seeded by (seed, step): no state to carry between
    steps or processes, and any step can be recomputed on its own.
    """
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, size, size=batch, dtype=np.int64)


def shard_indices(
    seed: int, step: int, size: int, batch: int, rank: int = 0, world: int = 1
) -> IntArray:
    """Rank ``rank``'s ``batch`` rows of step ``step``'s global batch of ``batch * world``.

    The global batch is :func:`batch_indices` of the whole size, cut into ``world``
    consecutive slices: together the ranks train on exactly the samples one process
    would, so a job re-run or resumed on another number of GPUs sees the same data.
    """
    indices = batch_indices(seed, step, size, batch * world)
    return indices[rank * batch : (rank + 1) * batch]


@dataclass(frozen=True)
class HostBatch:
    """One batch in host memory, as stored (bit-packed planes)."""

    planes: npt.NDArray[np.uint8]  # (batch, packed_bytes)
    policy: npt.NDArray[np.int32]  # (batch,)
    value: npt.NDArray[np.float32]  # (batch,)

    @staticmethod
    def empty(batch: int, geometry: Geometry) -> HostBatch:
        return HostBatch(
            np.empty((batch, geometry.packed_bytes), np.uint8),
            np.empty(batch, np.int32),
            np.empty(batch, np.float32),
        )


@dataclass(frozen=True)
class Window:
    """The window's samples: runs of consecutive shard rows, in window order."""

    geometry: Geometry
    shards: dict[int, ShardArrays]
    run_shard: IntArray  # (runs,): the shard of each run
    run_row: IntArray  # (runs,): its first row in that shard
    run_start: IntArray  # (runs + 1,): its first window index; the last entry is the size

    @staticmethod
    def from_entries(
        geometry: Geometry, entries: Sequence[CacheEntry], shards: dict[int, ShardArrays]
    ) -> Window:
        """The window of the games at ``entries`` (in window order; unencodable ones skipped)."""
        return Window.from_arrays(
            geometry,
            np.array([e.shard for e in entries], np.int64),
            np.array([e.start for e in entries], np.int64),
            np.array([e.count for e in entries], np.int64),
            shards,
        )

    @staticmethod
    def from_arrays(
        geometry: Geometry,
        shard: IntArray,
        start: IntArray,
        count: IntArray,
        shards: dict[int, ShardArrays],
    ) -> Window:
        """The window of the games at (shard, start, count), in window order; games
        without samples are skipped. Consecutive games in consecutive rows of one
        shard make one run (vectorised: no Python loop over the games)."""
        keep = count > 0
        shard, start, count = shard[keep], start[keep], count[keep]
        if not len(count):
            empty = np.zeros(0, np.int64)
            return Window(geometry, shards, empty, empty, np.zeros(1, np.int64))
        continues = np.zeros(len(count), bool)
        continues[1:] = (shard[1:] == shard[:-1]) & (start[1:] == start[:-1] + count[:-1])
        first = np.flatnonzero(~continues)
        ends = np.cumsum(count)
        last = np.append(first[1:] - 1, len(count) - 1)
        return Window(
            geometry,
            shards,
            shard[first].astype(np.int64),
            start[first].astype(np.int64),
            np.concatenate([[0], ends[last]]).astype(np.int64),
        )

    @property
    def size(self) -> int:
        return int(self.run_start[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the window's samples as stored."""
        return self.size * self.geometry.sample_bytes

    def materialize(self, out: HostBatch, start: int = 0, stop: int | None = None) -> None:
        """Copy window indices ``start..stop`` (default: all), in order, into ``out[0:]``."""
        stop = self.size if stop is None else stop
        first = int(np.searchsorted(self.run_start, start, side="right")) - 1
        for r in range(max(0, first), len(self.run_shard)):
            a, b = max(start, int(self.run_start[r])), min(stop, int(self.run_start[r + 1]))
            if a >= stop:
                break
            if a >= b:
                continue
            shard = self.shards[int(self.run_shard[r])]
            row = int(self.run_row[r]) + a - int(self.run_start[r])
            out.planes[a - start : b - start] = shard.planes[row : row + b - a]
            out.policy[a - start : b - start] = shard.policy[row : row + b - a]
            out.value[a - start : b - start] = shard.value[row : row + b - a]

    def locate(self, indices: IntArray) -> tuple[IntArray, IntArray]:
        """The (shard, row) of each window index."""
        run = np.searchsorted(self.run_start, indices, side="right") - 1
        return self.run_shard[run], self.run_row[run] + (indices - self.run_start[run])

    def gather(self, indices: IntArray, out: HostBatch, pool: Executor | None = None) -> None:
        """Gather the samples at ``indices`` into ``out`` straight from the shards.

        Vectorised per shard, rows in ascending order (sequential reads of a
        memory-mapped file); with ``pool`` the pieces are read in parallel (numpy
        releases the GIL while it copies, and page faults then overlap).
        """
        shard_of, row_of = self.locate(indices)
        if len(self.shards) == 1 or bool((shard_of == shard_of[0]).all()):
            # One shard (the common case within a job's window): numpy gathers
            # straight into `out`, with no sort, no scatter and no thread hand-off.
            arrays = self.shards[int(shard_of[0])]
            np.take(arrays.planes, row_of, axis=0, out=out.planes, mode="clip")
            np.take(arrays.policy, row_of, out=out.policy, mode="clip")
            np.take(arrays.value, row_of, out=out.value, mode="clip")
            return
        order = np.lexsort((row_of, shard_of))  # by shard, then row
        bounds = np.flatnonzero(np.diff(shard_of[order])) + 1
        pieces = [(int(shard_of[g[0]]), g) for g in np.split(order, bounds) if g.size]

        def copy(piece: tuple[int, IntArray]) -> None:
            shard, where = piece
            arrays = self.shards[shard]
            rows = row_of[where]
            out.planes[where] = np.take(arrays.planes, rows, axis=0)
            out.policy[where] = np.take(arrays.policy, rows)
            out.value[where] = np.take(arrays.value, rows)

        # Threads pay only when there is much to read (page faults of a window
        # larger than RAM overlap); for a cached batch their hand-offs cost more.
        if pool is None or indices.size < _PARALLEL_ROWS:
            for piece in pieces:
                copy(piece)
        else:
            for future in [pool.submit(copy, piece) for piece in pieces]:
                future.result()


_PARALLEL_ROWS = 8192
