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

The cache is bounded (:mod:`ringd.train.compact`): games that left the window are
dropped by rewriting or deleting the shards holding them, never a shard a running
job reads. A job pins what it reads (``pins/<job>-<pid>.pin``, listing its shards,
flock()ed for as long as the job's process lives), under the lock, before it lets
the lock go.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ringd.fsutil import fsync_dir, tree_bytes, write_atomically, write_bytes_atomically
from ringd.train.encode import Geometry, Samples

MANIFEST = "index.json"
MANIFEST_FORMAT = 1
SHARD_BYTES = 256 << 20  # a shard is closed once its samples reach this size
GAMES_DTYPE = np.dtype([("key", "V16"), ("start", "<i8"), ("count", "<i8")])
UNENCODABLE = -1
PINS = "pins"
_PIN_NUMBERS = itertools.count(1)  # one process may hold several pins (window, held-out)
PARTS = ("planes", "policy", "value", "games")


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

    def shard_games(self, shard: int) -> npt.NDArray[Any]:
        """A shard's (key, start, count) records (:data:`GAMES_DTYPE`)."""
        return np.load(self.folder / _shard_name(shard, "games"))  # type: ignore[no-any-return]

    def index(self) -> CacheIndex:
        """Every cached game of the listed shards, sorted by key, for lookups."""
        return CacheIndex.build({s: self.shard_games(s) for s in self.shard_ids()})

    def lookup(self, keys: Sequence[bytes]) -> list[CacheEntry | None]:
        """Each key's entry (or None if the game was never encoded), in the order given."""
        query = np.frombuffer(b"".join(keys), "V16") if keys else np.zeros(0, "V16")
        found = self.index().find(query)
        return [
            CacheEntry(int(found.shard[i]), int(found.start[i]), int(found.count[i]))
            if found.found[i]
            else None
            for i in range(len(keys))
        ]

    def pin(self, job: str, shards: Sequence[int]) -> Pin:
        """Pin ``shards`` against compaction for as long as this process holds the pin
        (call it while holding :meth:`locked`, before reading them)."""
        folder = self.folder / PINS
        folder.mkdir(exist_ok=True)
        path = folder / f"{job}-{os.getpid()}-{next(_PIN_NUMBERS)}.pin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, json.dumps({"pid": os.getpid(), "shards": sorted(shards)}).encode())
        except BaseException:
            os.close(fd)
            raise
        return Pin(path, fd)

    def pinned(self) -> set[int]:
        """Shards pinned by live jobs; pins left by jobs that died are removed.

        Call it holding :meth:`locked` (no pin is being written meanwhile).
        """
        out: set[int] = set()
        folder = self.folder / PINS
        if not folder.is_dir():
            return out
        for path in folder.glob("*.pin"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live job holds it
                    try:
                        out.update(int(s) for s in json.loads(os.read(fd, 1 << 20))["shards"])
                    except (ValueError, KeyError, TypeError):
                        # Unreadable while live (its job is writing it): pin everything.
                        out.update(self.shard_ids())
                    continue
                path.unlink(missing_ok=True)  # its job is gone
            finally:
                os.close(fd)
        return out

    def disk_bytes(self) -> int:
        """Bytes of this cache's files on disk."""
        return tree_bytes(self.folder)

    def shard_files(self, shard: int) -> list[Path]:
        """The files of a shard's sample arrays (what a window reads)."""
        return [self.folder / _shard_name(shard, part) for part in PARTS if part != "games"]

    def open_shard(self, shard: int) -> ShardArrays:
        def load(part: str) -> Any:
            return np.load(self.folder / _shard_name(shard, part), mmap_mode="r")

        return ShardArrays(load("planes"), load("policy"), load("value"))

    def writer(self, shard_bytes: int | None = None) -> ShardWriter:
        """A writer appending new shards; use it while holding :meth:`locked`."""
        return ShardWriter(self, SHARD_BYTES if shard_bytes is None else shard_bytes)

    def next_id(self) -> int:
        """The id of the next shard: never one used before (compaction removes shards)."""
        manifest = self._manifest()
        ids = [int(s["id"]) for s in manifest["shards"]]
        return max(int(manifest.get("next_id", 1)), max(ids, default=0) + 1)

    def _commit(self, shard: int, games: int, samples: int, *, drop: Sequence[int] = ()) -> None:
        """List a shard written under its final names (and unlist ``drop``), atomically."""
        manifest = self._manifest()
        dropped = set(drop)
        manifest["shards"] = [s for s in manifest["shards"] if int(s["id"]) not in dropped]
        manifest["shards"].append({"id": shard, "games": games, "samples": samples})
        manifest["next_id"] = max(int(manifest.get("next_id", 1)), shard + 1)
        data = json.dumps(manifest, indent=1).encode()
        write_bytes_atomically(self.folder / MANIFEST, data)

    def drop(self, shards: Sequence[int]) -> None:
        """Unlist ``shards`` (atomically), then delete their files."""
        if not shards:
            return
        manifest = self._manifest()
        dropped = set(shards)
        ids = [int(s["id"]) for s in manifest["shards"]]
        manifest["next_id"] = max(int(manifest.get("next_id", 1)), max(ids, default=0) + 1)
        manifest["shards"] = [s for s in manifest["shards"] if int(s["id"]) not in dropped]
        write_bytes_atomically(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        for shard in shards:
            remove_shard_files(self.folder, shard)

    def remove_unlisted(self) -> int:
        """Delete shard files no manifest lists (a crashed writer's or compaction's
        leftovers); hold :meth:`locked`. Returns the files removed."""
        listed = set(self.shard_ids())
        removed = 0
        for path in self.folder.glob("*.npy"):
            head = path.name.split(".", 1)[0]
            if head.isdigit() and int(head) not in listed:
                path.unlink(missing_ok=True)
                removed += 1
        for path in self.folder.glob(".*.tmp-*"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed


def remove_shard_files(folder: Path, shard: int) -> None:
    for part in PARTS:
        (folder / _shard_name(shard, part)).unlink(missing_ok=True)


@dataclass
class Pin:
    """A job's pin on the shards it reads; released when the process exits or on release()."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class Found:
    """Lookup results, one per key asked: found, and if so the shard, start and count."""

    found: npt.NDArray[np.bool_]
    shard: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]


def split_keys(keys: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """16-byte keys as two unsigned 64-bit integers (high, low), for sorting and search."""
    pairs = np.ascontiguousarray(keys).view(">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


class KeySet:
    """A set of 16-byte keys with a vectorised lookup (numpy only).

    Keys are hashes, so their high 64 bits alone tell nearly all of them apart: the
    set is sorted by those, and so are the keys looked up (sorted queries search a
    sorted array with few cache misses). The low 64 bits are then compared; the rare
    run of equal high halves (the same key twice, or a 64-bit collision) is looked at
    key by key.
    """

    def __init__(self, keys: npt.NDArray[Any]) -> None:
        hi, lo = split_keys(keys)
        self.order = np.argsort(hi)
        self.hi, self.lo = hi[self.order], lo[self.order]

    def __len__(self) -> int:
        return len(self.hi)

    def positions(self, keys: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """For each key asked, its position in the keys given to the constructor (the
        last one if it was given twice), or -1."""
        q_hi, q_lo = split_keys(keys)
        out = np.full(len(q_hi), -1, np.int64)
        n = len(self.hi)
        if not n or not len(q_hi):
            return out
        by_hi = np.argsort(q_hi)
        s_hi, s_lo = q_hi[by_hi], q_lo[by_hi]
        at = np.minimum(np.searchsorted(self.hi, s_hi, "left"), n - 1)
        same_hi = self.hi[at] == s_hi
        following = np.minimum(at + 1, n - 1)
        run = same_hi & (following > at) & (self.hi[following] == s_hi)
        single = same_hi & ~run & (self.lo[at] == s_lo)
        out[by_hi[single]] = self.order[at[single]]
        for i in np.flatnonzero(run).tolist():
            start = int(at[i])
            stop = int(np.searchsorted(self.hi, s_hi[i], "right"))
            match = np.flatnonzero(self.lo[start:stop] == s_lo[i])
            if match.size:
                out[by_hi[i]] = int(self.order[start:stop][match].max())
        return out

    def contains(self, keys: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        return self.positions(keys) >= 0


class CacheIndex:
    """The cached games of a set of shards, for vectorised lookups by key."""

    def __init__(self, games: npt.NDArray[Any], shard: npt.NDArray[np.int64]) -> None:
        self.games = games  # (n,) GAMES_DTYPE, shard by shard in id order
        self.shard = shard  # (n,) the shard of each
        self.keys = KeySet(games["key"])

    @staticmethod
    def build(shards: dict[int, npt.NDArray[Any]]) -> CacheIndex:
        ids = sorted(shards)
        if not ids:
            return CacheIndex(np.zeros(0, GAMES_DTYPE), np.zeros(0, np.int64))
        games = np.concatenate([shards[i] for i in ids])
        shard = np.repeat(np.array(ids, np.int64), [len(shards[i]) for i in ids])
        return CacheIndex(games, shard)

    def find(self, keys: npt.NDArray[Any]) -> Found:
        """Each key's entry; a game cached twice (never, but for a crash between a
        shard and its manifest) is found in its latest shard."""
        at = self.keys.positions(keys)
        found = at >= 0
        safe = np.where(found, at, 0)
        if not len(self.games):
            zero = np.zeros(len(keys), np.int64)
            return Found(found, zero, zero, zero)
        return Found(
            found,
            np.where(found, self.shard[safe], -1),
            np.where(found, self.games["start"][safe], 0),
            np.where(found, self.games["count"][safe], 0),
        )


@dataclass
class _Pending:
    keys: list[bytes] = field(default_factory=list)  # 16 bytes a game (several per item)
    starts: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    samples: list[Samples] = field(default_factory=list)
    rows: int = 0
    games: int = 0


class ShardWriter:
    """Collects encoded games and writes them as shards (several if they are large)."""

    def __init__(self, cache: SampleCache, shard_bytes: int) -> None:
        self._cache = cache
        self._shard_bytes = shard_bytes
        self._next = cache.next_id()
        self._pending = _Pending()
        self.written: list[int] = []  # shards this writer listed

    @property
    def pending(self) -> int:
        """Games added but not yet written."""
        return self._pending.games

    def add(self, key: bytes, samples: Samples | None) -> CacheEntry:
        """Append one game (None: the encoder rejected it); the entry is valid once flushed."""
        pending = self._pending
        count = UNENCODABLE if samples is None else len(samples)
        entry = CacheEntry(self._next, pending.rows, count)
        pending.keys.append(key)
        pending.starts.append(pending.rows)
        pending.counts.append(count)
        pending.games += 1
        if samples is not None and len(samples):
            pending.samples.append(samples)
            pending.rows += len(samples)
        if pending.rows * self._cache.geometry.sample_bytes >= self._shard_bytes:
            self.flush()
        return entry

    def add_block(
        self, keys: npt.NDArray[Any], counts: npt.NDArray[np.int64], samples: Samples
    ) -> None:
        """Append several games at once (compaction): their keys, their sample counts
        (UNENCODABLE: rejected) and their samples, the rows of the games with samples
        in order."""
        pending = self._pending
        rows = np.where(counts > 0, counts, 0)
        starts = pending.rows + np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        pending.keys.append(np.ascontiguousarray(keys).tobytes())
        pending.starts.extend(starts.tolist())
        pending.counts.extend(counts.tolist())
        pending.games += len(keys)
        if len(samples):
            pending.samples.append(samples)
            pending.rows += len(samples)
        if pending.rows * self._cache.geometry.sample_bytes >= self._shard_bytes:
            self.flush()

    def flush(self, drop: Sequence[int] = ()) -> None:
        """Write the pending games as one shard and list it in the manifest (unlisting
        ``drop`` in the same replacement of the manifest)."""
        pending = self._pending
        if not pending.games:
            if drop:
                self._cache.drop(drop)
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
        games = np.zeros(pending.games, GAMES_DTYPE)
        games["key"] = np.frombuffer(b"".join(pending.keys), dtype="V16")
        games["start"] = pending.starts
        games["count"] = pending.counts
        folder = self._cache.folder
        for part, array in (("planes", planes), ("policy", policy), ("value", value)):
            _save(folder / _shard_name(shard, part), array)
        # The games file last: a shard is only listed once all its arrays are on disk.
        _save(folder / _shard_name(shard, "games"), games)
        fsync_dir(folder)
        self._cache._commit(shard, pending.games, pending.rows, drop=drop)
        for old in drop:
            remove_shard_files(folder, old)
        self.written.append(shard)
        self._next += 1
        self._pending = _Pending()


def _save(path: Path, array: npt.NDArray[Any]) -> None:
    write_atomically(path, lambda f: np.save(f, array), sync_dir=False)
