"""Keep a config's sample cache bounded: the current window plus a margin.

The cache is append-only per job (:mod:`ringd.train.cache`), so without this it grows
with every game ever encoded. After each job the daemon runs, in the background (a
child process at nice 19 and idle I/O priority)::

    python -m ringd.train.compact SPEC.json [--margin 0.25]

which keeps the games of that job's window and held-out set (the window only slides
forward: a game that left it never comes back) and drops the rest:

1. shards holding no kept game are unlisted and deleted (no copying);
2. while the cache still holds more than ``(1 + margin) x`` the kept games' samples,
   the shards with the most dropped samples have their kept games copied into new
   shards, and are then unlisted and deleted.

Never a shard a running job reads: jobs pin theirs (``SampleCache.pin``) under the
cache's lock, and compaction holds the lock and skips pinned shards (they are
compacted by a later run, once their job is gone). Each step replaces the manifest
atomically before any file is deleted, so a crash leaves at most unlisted files,
which the next run removes. One JSON line on stdout reports what was done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ringd.train.cache import CacheError, KeySet, SampleCache
from ringd.train.encode import Samples, UnknownEncoder, UnsupportedBoard, load_encoder
from ringd.train.spans import SpansError, WindowSpans
from ringd.train.spec import JobSpec, SpecError, load_spec

DEFAULT_MARGIN = 0.25


@dataclass(frozen=True)
class CompactReport:
    config: str
    folder: str
    bytes_before: int
    bytes_after: int
    samples_before: int
    samples_after: int
    kept_samples: int  # samples of the games kept (the window and the held-out games)
    shards_before: int
    shards_after: int
    dropped: list[int]  # shards deleted whole
    rewritten: list[int]  # shards whose kept games were copied into new ones
    pinned: list[int]  # shards left alone because a running job reads them
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compact(
    cache: SampleCache,
    keep: npt.NDArray[Any],
    *,
    margin: float = DEFAULT_MARGIN,
    shard_bytes: int | None = None,
    config: str = "",
) -> CompactReport:
    """Drop the cached games whose keys are not in ``keep`` (16-byte voids) until the
    cache holds at most ``(1 + margin) x`` the kept games' samples (pinned shards
    aside)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    started = time.monotonic()
    with cache.locked():
        bytes_before = cache.disk_bytes()
        cache.remove_unlisted()
        pinned = cache.pinned()
        ids = cache.shard_ids()
        kept_set = KeySet(keep)
        games = {s: cache.shard_games(s) for s in ids}
        live = {s: kept_set.contains(g["key"]) for s, g in games.items()}
        rows = {s: np.where(g["count"] > 0, g["count"], 0) for s, g in games.items()}
        samples = {s: int(rows[s].sum()) for s in ids}
        dead_samples = {s: int(rows[s][~live[s]].sum()) for s in ids}
        total = sum(samples.values())
        kept_samples = total - sum(dead_samples.values())
        bound = kept_samples * (1 + margin)

        dropped = [s for s in ids if s not in pinned and not live[s].any()]
        after = total - sum(samples[s] for s in dropped)
        rewritten: list[int] = []
        if after > bound:
            candidates = sorted(
                (s for s in ids if s not in pinned and s not in dropped and dead_samples[s]),
                key=lambda s: (-dead_samples[s], s),
            )
            for s in candidates:
                rewritten.append(s)
                after -= dead_samples[s]
                if after <= bound:
                    break
        writer = cache.writer(shard_bytes)
        for s in sorted(rewritten):
            arrays = cache.open_shard(s)
            g, keep_mask = games[s], live[s]
            starts, counts = g["start"][keep_mask], g["count"][keep_mask]
            with_rows = counts > 0
            take = _row_ranges(starts[with_rows], counts[with_rows])
            writer.add_block(
                g["key"][keep_mask],
                counts.astype(np.int64),
                Samples(arrays.planes[take], arrays.policy[take], arrays.value[take]),
            )
        # One manifest replacement lists the last new shard and unlists every old one;
        # only then are the old files deleted.
        writer.flush(drop=sorted(dropped + rewritten))
        return CompactReport(
            config=config,
            folder=str(cache.folder),
            bytes_before=bytes_before,
            bytes_after=cache.disk_bytes(),
            samples_before=total,
            samples_after=after,
            kept_samples=kept_samples,
            shards_before=len(ids),
            shards_after=len(cache.shard_ids()),
            dropped=sorted(dropped),
            rewritten=sorted(rewritten),
            pinned=sorted(pinned & set(ids)),
            seconds=round(time.monotonic() - started, 3),
        )


def _row_ranges(
    starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The rows ``start .. start + count - 1`` of each game, concatenated."""
    if not len(counts):
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    rows: npt.NDArray[np.int64] = np.arange(int(counts.sum()), dtype=np.int64) + offsets
    return rows


def kept_keys(spec: JobSpec) -> npt.NDArray[Any]:
    """The keys a job's window and held-out games hold: what its config's cache keeps."""
    spans = (
        WindowSpans.from_file(spec.spans)
        if spec.spans is not None
        else WindowSpans.from_games(spec.games)
    )
    held = WindowSpans.from_games(spec.holdout.games)
    return np.concatenate([np.asarray(spans.keys), np.asarray(held.keys)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ringd.train.compact",
        description="Drop the cached samples of games outside a job's window (and its "
        "held-out games) from its config's sample cache, beyond a margin.",
    )
    parser.add_argument("spec", type=Path, help="the job spec whose window is kept")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec.read_bytes())
        encoder = load_encoder(spec.encoder)
        geometry = encoder.geometry(spec.board, spec.players)
        keep = kept_keys(spec)
        cache = SampleCache(
            Path(spec.samples_dir), spec.config, encoder.name, encoder.version, geometry
        )
        report = compact(cache, keep, margin=args.margin, config=spec.config)
    except (OSError, SpecError, SpansError, CacheError, UnknownEncoder, UnsupportedBoard) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(report.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
