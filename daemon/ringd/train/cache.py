"""The sample cache: each game is encoded once, ever, and kept in append-only shards.

A job looks the window's game keys up here and encodes only the games it does not
find, so the cost of a job grows with the new games, not with the window. One folder
per config and encoder version (a new encoder version starts a fresh cache)::

    <samples_dir>/<config>/<encoder>-v<version>/
        index.json          manifest: encoder, geometry and the committed shards
        lock                flock()ed by the job adding samples
        000001.planes.npy   (n, packed_bytes) uint8: bit-packed feature planes
        000001.policy.npy   (n,) int32: policy targets
        000001.value.npy    (n,) float32: value targets
        000001.games.npy    (g,) records (key: 16 bytes, start, count): each game's rows
                            in the shard; count -1 marks a game the encoder rejected
        000002.*.npy        ...

Shards are never modified once written. A shard's files are written under temporary
names, fsynced and renamed, and only then is the shard listed in ``index.json``
(itself replaced atomically): a crash leaves at most unlisted files, which the next
writer overwrites. Games are keyed by the hash of their bytes, so a cached game is
the right game wherever its file is now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ringd.fsutil import fsync_dir, write_atomically, write_bytes_atomically
from ringd.train.encode import Geometry, Samples

MANIFEST = "index.json"
MANIFEST_FORMAT = 1
SHARD_BYTES = 256 << 20  # a shard is closed once its samples reach this size
GAMES_DTYPE = np.dtype([("key", "V16"), ("start", "<i8"), ("count", "<i8")])
UNENCODABLE = -1


class CacheError(Exception):
    """The cache folder is inconsistent with this job (unreadable manifest, other geometry)."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Where a game's samples are: ``count`` rows from ``start`` in shard ``shard``."""

    shard: int
    start: int
    count: int  # UNENCODABLE (-1): the encoder rejected the game; it has no rows


@dataclass(frozen=True)
class ShardArrays:
    """A shard's sample arrays, memory-mapped (read-only)."""

    planes: npt.NDArray[np.uint8]
    policy: npt.NDArray[np.int32]
    value: npt.NDArray[np.float32]


def _shard_name(shard: int, part: str) -> str:
    return f"{shard:06d}.{part}.npy"


class SampleCache:
    """The cache of one config for one encoder name and version."""

    def __init__(
        self, samples_dir: Path, config: str, encoder: str, version: int, geometry: Geometry
    ) -> None:
        self.folder = samples_dir / config / f"{encoder}-v{version}"
        self.encoder = encoder
        self.version = version
        self.geometry = geometry

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's lock: one job at a time looks up, encodes and appends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        try:
            manifest: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            return self._empty_manifest()
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: unreadable manifest: {e}") from e
        expected = self._empty_manifest()
        for key in ("format", "encoder", "encoder_version", "geometry"):
            if manifest.get(key) != expected[key]:
                raise CacheError(
                    f"{path}: {key} is {manifest.get(key)!r}, this job has {expected[key]!r} "
                    "(an encoder changing its samples must bump its version)"
                )
        return manifest

    def _empty_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "encoder": self.encoder,
            "encoder_version": self.version,
            "geometry": self.geometry.as_dict(),
            "shards": [],
        }

    def shard_ids(self) -> list[int]:
        return [int(s["id"]) for s in self._manifest()["shards"]]

    def lookup(self, keys: Sequence[bytes]) -> list[CacheEntry | None]:
        """Each key's entry (or None if the game was never encoded), in the order given."""
        wanted: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            wanted.setdefault(key, []).append(i)
        found: list[CacheEntry | None] = [None] * len(keys)
        for shard in self.shard_ids():
            games = np.load(self.folder / _shard_name(shard, "games"))
            # One pass over the shard's keys; only the window's keys cost a dict hit.
            for key, start, count in zip(
                games["key"].tolist(), games["start"].tolist(), games["count"].tolist(), strict=True
            ):
                positions = wanted.get(key)
                if positions is not None:
                    for i in positions:
                        found[i] = CacheEntry(shard, start, count)
        return found

    def open_shard(self, shard: int) -> ShardArrays:
        def load(part: str) -> Any:
            return np.load(self.folder / _shard_name(shard, part), mmap_mode="r")

        return ShardArrays(load("planes"), load("policy"), load("value"))

    def writer(self, shard_bytes: int | None = None) -> ShardWriter:
        """A writer appending new shards; use it while holding :meth:`locked`."""
        return ShardWriter(self, SHARD_BYTES if shard_bytes is None else shard_bytes)

    def _commit(self, shard: int, games: int, samples: int) -> None:
        manifest = self._manifest()
        manifest["shards"].append({"id": shard, "games": games, "samples": samples})
        data = json.dumps(manifest, indent=1).encode()
        write_bytes_atomically(self.folder / MANIFEST, data)


@dataclass
class _Pending:
    keys: list[bytes] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    samples: list[Samples] = field(default_factory=list)
    rows: int = 0


class ShardWriter:
    """Collects encoded games and writes them as shards (several if they are large)."""

    def __init__(self, cache: SampleCache, shard_bytes: int) -> None:
        self._cache = cache
        self._shard_bytes = shard_bytes
        ids = cache.shard_ids()
        self._next = max(ids, default=0) + 1
        self._pending = _Pending()

    def add(self, key: bytes, samples: Samples | None) -> CacheEntry:
        """Append one game (None: the encoder rejected it); the entry is valid once flushed."""
        pending = self._pending
        count = UNENCODABLE if samples is None else len(samples)
        entry = CacheEntry(self._next, pending.rows, count)
        pending.keys.append(key)
        pending.starts.append(pending.rows)
        pending.counts.append(count)
        if samples is not None and len(samples):
            pending.samples.append(samples)
            pending.rows += len(samples)
        if pending.rows * self._cache.geometry.sample_bytes >= self._shard_bytes:
            self.flush()
        return entry

    def flush(self) -> None:
        """Write the pending games as one shard and list it in the manifest."""
        pending = self._pending
        if not pending.keys:
            return
        geometry = self._cache.geometry
        shard = self._next
        if pending.samples:
            planes = np.concatenate([s.planes for s in pending.samples])
            policy = np.concatenate([s.policy for s in pending.samples])
            value = np.concatenate([s.value for s in pending.samples])
        else:
            planes = np.zeros((0, geometry.packed_bytes), np.uint8)
            policy = np.zeros(0, np.int32)
            value = np.zeros(0, np.float32)
        games = np.zeros(len(pending.keys), GAMES_DTYPE)
        games["key"] = np.frombuffer(b"".join(pending.keys), dtype="V16")
        games["start"] = pending.starts
        games["count"] = pending.counts
        folder = self._cache.folder
        for part, array in (("planes", planes), ("policy", policy), ("value", value)):
            _save(folder / _shard_name(shard, part), array)
        # The games file last: a shard is only listed once all its arrays are on disk.
        _save(folder / _shard_name(shard, "games"), games)
        fsync_dir(folder)
        self._cache._commit(shard, len(pending.keys), pending.rows)
        self._next += 1
        self._pending = _Pending()


def _save(path: Path, array: npt.NDArray[Any]) -> None:
    write_atomically(path, lambda f: np.save(f, array), sync_dir=False)
