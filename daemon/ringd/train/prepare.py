"""Bring a job's window into the sample cache: look up, read + key-check, encode, append.

Games already in the cache are not read again: their key is the hash of their bytes,
so the cached samples are those of exactly this game wherever its file is now. The
others are read back from their spans (a key mismatch or an unreadable file makes
a game missing), encoded on every core (a process pool), and appended as new shards.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import msgspec
import numpy as np

from ringd.records import DEFAULT_RULES, Rules
from ringd.train.cache import Pin, SampleCache
from ringd.train.data import DEFAULT_BUDGET_FRACTION, HostBatch, Window, host_available_bytes
from ringd.train.encode import EncodeError, Encoder, Geometry, Samples, load_encoder
from ringd.train.games import Missing, read_games
from ringd.train.holdout import held_out_buckets
from ringd.train.protocol import ExitCode, JobFailed
from ringd.train.spans import SpansError, WindowSpans
from ringd.train.spec import JobSpec

log = logging.getLogger(__name__)

READ_BATCH = 512  # games read from disk at a time (bounds the memory of raw lines)
CHUNK_GAMES = 32  # games per encoding task
CHUNK_BYTES = 4 << 20  # ... or fewer if their lines are this large
POOL_MIN_GAMES = 64  # fewer new games than this are encoded in-process (no pool start-up)
WARM_CHUNK = 8 << 20  # bytes a read of the cache's warming thread
LOGGED_REJECTS = 20  # rejected games named one by one in the log (all are counted)


@dataclass(frozen=True)
class Failure:
    """Why the encoder could not encode a game; ``permanent`` failures are cached."""

    reason: str
    permanent: bool


@dataclass(frozen=True)
class Prepared:
    window: Window
    missing: list[Missing]  # games that could not be read back (or whose key mismatched)
    # (window position, reason) of the games the encoder refused, in window order; each
    # reason reads "encode_error: FILE:LINE: moves[i].FIELD: ..." (FILE:LINE of the game)
    rejected: list[tuple[int, str]]
    encoded: int  # games this job encoded
    cached: int  # games found already encoded
    new_games: int  # usable games with seq >= new_from_seq
    new_samples: int  # their samples: what the number of steps follows
    seq_first: int | None  # sequence range of the usable games
    seq_last: int | None
    spans: WindowSpans | None = None  # the window's games (seq, key, span) as read
    pin: Pin | None = None  # this job's pin on the cache shards the window reads

    @property
    def games(self) -> int:
        """Games in the window."""
        return len(self.spans) if self.spans is not None else 0

    def seq_of(self, index: int) -> int:
        """The sequence number of the game at window position ``index``."""
        assert self.spans is not None
        return int(self.spans.seq[index])


def worker_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def spec_rules(spec: JobSpec) -> Rules:
    """How the trainer keys the lines it reads back: the daemon's board aliases."""
    if spec.board_aliases is None:
        return DEFAULT_RULES
    return Rules(aliases=dict(spec.board_aliases))


def window_spans(spec: JobSpec) -> WindowSpans:
    """The spec's window (its spans file, or its inline games), checked: oldest first,
    no held-out game. A bad spans file is a bad spec (exit 2)."""
    if spec.spans is None:
        return WindowSpans.from_games(spec.games)  # the spec's own validation checked them
    try:
        spans = WindowSpans.from_file(spec.spans)
    except SpansError as e:
        raise JobFailed(ExitCode.BAD_SPEC, f"spans: {e}") from None
    seq = spans.seq
    if len(seq) > 1 and not bool((seq[1:] > seq[:-1]).all()):
        at = int(np.flatnonzero(seq[1:] <= seq[:-1])[0]) + 1
        raise JobFailed(
            ExitCode.BAD_SPEC,
            f"spans: games must be oldest first with increasing seq; seq {int(seq[at])} "
            f"follows {int(seq[at - 1])}",
        )
    buckets = held_out_buckets(spec.holdout.fraction)
    held: np.ndarray = np.zeros(len(spans), bool)
    if buckets and len(spans):
        first8 = np.ascontiguousarray(spans.keys).view(">u8").reshape(-1, 2)[:, 0]
        held |= (first8 % np.uint64(10_000)) < np.uint64(buckets)
    if spec.holdout.games and len(spans):
        named = np.frombuffer(b"".join(g.key_bytes for g in spec.holdout.games), "V16")
        held |= np.isin(spans.keys, named)
    if held.any():
        i = int(np.flatnonzero(held)[0])
        raise JobFailed(
            ExitCode.BAD_SPEC,
            f"spans: seq {int(seq[i])} (key {spans.key(i).hex()}) is a held-out game "
            f"(holdout.fraction {spec.holdout.fraction:g}); no job trains on one",
        )
    return spans


def prepare_window(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    *,
    stop: Callable[[], bool],
    workers: int | None = None,
    spans: WindowSpans | None = None,
    pin: bool = True,
) -> Prepared:
    """The window's samples, encoding (and caching) the games not encoded before.

    ``stop`` is polled between encoding tasks; when it turns true, what has been
    encoded so far is committed to the cache and :class:`JobFailed` (INTERRUPTED) is
    raised. ``workers``: processes for encoding (default: every core this process may
    use; 1 encodes in this process). ``spans``: the games (default: the spec's
    window). With ``pin`` the shards the window reads are pinned against compaction
    (``Prepared.pin``) before the cache's lock is let go.

    Everything but reading and encoding the new games is vectorised: a window of
    500,000 cached games costs a key lookup in numpy, not a Python loop.
    """
    # One pass in the order a job needs it (read, check keys, encode the uncached, pin,
    # assemble the window); its steps share the counts it reports, so it stays whole.
    if spans is None:
        spans = window_spans(spec)
    rules = spec_rules(spec)
    cache_ = SampleCache(
        Path(spec.samples_dir), spec.config, encoder.name, encoder.version, geometry
    )
    missing: list[Missing] = []
    rejected: list[tuple[int, str]] = []
    encoded = 0
    held: Pin | None = None
    with cache_.locked():
        found = cache_.index().find(spans.keys)
        have, shard = found.found.copy(), found.shard.copy()
        start, count = found.start.copy(), found.count.copy()
        todo = np.flatnonzero(~have)
        cached = len(spans) - len(todo)
        for i in np.flatnonzero(have & (count < 0)).tolist():
            rejected.append((i, "rejected by the encoder when first seen (see that job's log)"))
        if len(todo):
            log.info("encoding %d new games (%d already cached)", len(todo), cached)
            _warm(cache_, np.unique(shard[have & (count > 0)]).tolist())
            n_workers = workers if workers is not None else worker_count()
            use_pool = n_workers > 1 and len(todo) >= POOL_MIN_GAMES
            writer = cache_.writer()
            executor = (
                ProcessPoolExecutor(
                    max_workers=n_workers,
                    # spawn: the parent may hold threads (and later torch); forking those is unsafe.
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                )
                if use_pool
                else None
            )
            try:
                results = _encode(
                    executor,
                    encoder,
                    geometry,
                    spans,
                    todo.tolist(),
                    rules,
                    missing,
                    stop,
                    2 * n_workers,
                )
                for i, result in results:
                    entry = None
                    if isinstance(result, Failure):
                        rejected.append((i, result.reason))
                        if result.permanent:
                            entry = writer.add(spans.key(i), None)
                    else:
                        entry = writer.add(spans.key(i), result)
                    if entry is not None:
                        have[i] = True
                        shard[i], start[i], count[i] = entry.shard, entry.start, entry.count
                    encoded += 1
            finally:
                # Whatever was encoded is kept, interrupted or not: never encoded twice.
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
                writer.flush()
            if stop():
                raise JobFailed(
                    ExitCode.INTERRUPTED,
                    f"interrupted while encoding games: {encoded} of {len(todo)} encoded, "
                    "kept in the sample cache",
                )
        # Usable: in the cache with samples (a missing game was never encoded, so has no entry).
        usable = have & (count >= 0)
        used = sorted(set(np.unique(shard[usable]).tolist()))
        if pin:
            held = cache_.pin(spec.job_id, used)
        shards = {s: cache_.open_shard(s) for s in used}
    rejected = _located(spans, sorted(rejected))
    for _, why in rejected[:LOGGED_REJECTS]:
        log.warning("%s", why)
    if len(rejected) > LOGGED_REJECTS:
        log.warning("... and %d more games rejected by the encoder", len(rejected) - LOGGED_REJECTS)
    window = Window.from_arrays(geometry, shard[usable], start[usable], count[usable], shards)
    new = usable & (spans.seq >= spec.new_from_seq)
    positions = np.flatnonzero(usable)
    return Prepared(
        window=window,
        missing=missing,
        rejected=rejected,
        encoded=encoded,
        cached=cached,
        new_games=int(new.sum()),
        new_samples=int(count[new].sum()),
        seq_first=int(spans.seq[positions[0]]) if len(positions) else None,
        seq_last=int(spans.seq[positions[-1]]) if len(positions) else None,
        spans=spans,
        pin=held,
    )


def _warm(cache_: SampleCache, shards: list[int]) -> None:
    """Read the cached part of the window once, in the background, while the new games
    are encoded: the loader then copies it from the page cache.

    Only what fits the host's default loader budget: a window larger than that stays in
    its memory-mapped shards (the mmap tier) and reading it all ahead would only evict
    other pages. The reads are sequential: the loader's copy through the mapping,
    from a cold cache, took 4 s for 0.9 GB where reading the files took 1 s.
    """
    files = [f for s in shards for f in cache_.shard_files(s)]
    sizes = [_size_of(f) for f in files]
    if not files or sum(sizes) > host_available_bytes() * DEFAULT_BUDGET_FRACTION:
        return

    def read() -> None:
        buffer = bytearray(WARM_CHUNK)
        for f in files:
            with contextlib.suppress(OSError), open(f, "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass

    threading.Thread(target=read, name="warm-cache", daemon=True).start()


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _located(spans: WindowSpans, rejected: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Each reason prefixed ``encode_error: FILE:LINE:``, the game's file and line number.

    The line numbers take one read of each such file up to its last rejected game.
    """
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, _ in rejected:
        by_path[spans.path(i)].append(spans.offset(i))
    lines = {path: _line_numbers(path, offsets) for path, offsets in by_path.items()}
    out: list[tuple[int, str]] = []
    for i, why in rejected:
        path, offset = spans.path(i), spans.offset(i)
        line = lines[path].get(offset)
        where = f"{path}:{line}" if line is not None else f"{path}:? (byte {offset})"
        out.append((i, f"encode_error: {where}: {why}"))
    return out


def _line_numbers(path: str, offsets: list[int], block: int = 1 << 20) -> dict[int, int]:
    """The 1-based line number of each byte offset (a line's start) in the file ``path``;
    offsets it cannot reach (file gone or shorter) are left out."""
    wanted = sorted(set(offsets))
    out: dict[int, int] = {}
    k, pos, newlines = 0, 0, 0
    try:
        with open(path, "rb") as f:
            while k < len(wanted):
                chunk = f.read(block)
                if not chunk:
                    break
                end = pos + len(chunk)
                while k < len(wanted) and wanted[k] <= end:
                    out[wanted[k]] = newlines + chunk.count(b"\n", 0, wanted[k] - pos) + 1
                    k += 1
                newlines += chunk.count(b"\n")
                pos = end
    except OSError:
        pass
    return out


def _encode(
    executor: Executor | None,
    encoder: Encoder,
    geometry: Geometry,
    spans: WindowSpans,
    todo: list[int],
    rules: Rules,
    missing: list[Missing],
    stop: Callable[[], bool],
    in_flight: int,
) -> Iterator[tuple[int, Samples | Failure]]:
    """(window position, samples or failure) of each readable game of ``todo``, in order.

    Games are read READ_BATCH at a time and encoded in chunks; at most ``in_flight``
    chunks are queued at once, so memory stays bounded however many games are new.
    """
    queue: deque[tuple[list[int], Future[list[Samples | Failure]]]] = deque()
    for start in range(0, len(todo), READ_BATCH):
        if stop():
            break
        read = read_games(spans, todo[start : start + READ_BATCH], rules)
        missing.extend(read.missing)
        for chunk in _chunks(sorted(read.lines), read.lines):
            if stop():
                break
            lines = [read.lines[i] for i in chunk]
            if executor is None:  # a few games: encode here, with this encoder object
                future: Future[list[Samples | Failure]] = Future()
                future.set_result(_encode_lines(encoder, geometry, lines))
            else:
                future = executor.submit(_encode_chunk, encoder.name, geometry, lines)
            queue.append((chunk, future))
            while len(queue) >= in_flight:
                yield from _drain(queue.popleft())
    while queue:
        item = queue.popleft()
        # Stopping: keep what is already encoded, drop what is not (the caller cancels it).
        if not stop() or item[1].done():
            yield from _drain(item)


def _drain(
    item: tuple[list[int], Future[list[Samples | Failure]]],
) -> Iterator[tuple[int, Samples | Failure]]:
    chunk, future = item
    yield from zip(chunk, future.result(), strict=True)


def _chunks(positions: list[int], lines: dict[int, bytes]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for i in positions:
        chunk.append(i)
        size += len(lines[i])
        if len(chunk) >= CHUNK_GAMES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode_lines(
    encoder: Encoder, geometry: Geometry, lines: list[bytes]
) -> list[Samples | Failure]:
    out: list[Samples | Failure] = []
    for line in lines:
        try:
            record = msgspec.json.decode(line)
            if not isinstance(record, dict):
                raise EncodeError("the line is not a JSON object")
            samples = encoder.encode(record, geometry)
            samples.check(geometry)
            out.append(samples)
        except (EncodeError, msgspec.DecodeError) as e:
            out.append(Failure(str(e), permanent=True))
        except Exception as e:
            # An encoder bug rather than a bad record: skip the game in this job but do
            # not cache the failure, so a fixed encoder (same version) encodes it later.
            out.append(Failure(f"encoder crashed: {type(e).__name__}: {e}", permanent=False))
    return out


@cache
def _worker_encoder(name: str) -> Encoder:
    return load_encoder(name)


def _encode_chunk(name: str, geometry: Geometry, lines: list[bytes]) -> list[Samples | Failure]:
    """Runs in a pool process: the encoder is loaded there by name, once."""
    return _encode_lines(_worker_encoder(name), geometry, lines)


def _worker_init() -> None:
    # A stop (SIGTERM from the daemon, which signals the whole process group, or Ctrl-C
    # on a terminal) is the job's to handle: it stops submitting, keeps what is encoded
    # and shuts the pool down. A worker killed mid-task would break the pool instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# The held-out samples a job evaluates on are at most this many (the most recent games').
MAX_HELD_OUT_SAMPLES = 65_536


@dataclass(frozen=True)
class HeldOutSamples:
    """The held-out games' samples (``spec.holdout.games``), in host memory."""

    games: int  # held-out games read and encoded
    samples: HostBatch

    @property
    def size(self) -> int:
        return len(self.samples.policy)


def prepare_holdout(
    spec: JobSpec,
    encoder: Encoder,
    geometry: Geometry,
    *,
    stop: Callable[[], bool],
    workers: int | None = None,
) -> HeldOutSamples:
    """The samples of the spec's held-out games, through the sample cache like the window's.

    A held-out game that cannot be read or encoded is left out (and logged, as in the
    window); the samples of the most recent games are kept, at most MAX_HELD_OUT_SAMPLES.
    """
    games = sorted(spec.holdout.games, key=lambda g: g.seq)
    if not games:
        return HeldOutSamples(0, HostBatch.empty(0, geometry))
    log.info("held-out games to evaluate on: %d", len(games))
    holdout = spec.model_copy(update={"new_from_seq": 0})
    prepared = prepare_window(
        holdout,
        encoder,
        geometry,
        stop=stop,
        workers=workers,
        spans=WindowSpans.from_games(games),
    )
    try:
        window = prepared.window
        n = min(window.size, MAX_HELD_OUT_SAMPLES)
        samples = HostBatch.empty(n, geometry)
        window.materialize(samples, window.size - n)
    finally:
        if prepared.pin is not None:
            prepared.pin.release()  # copied: the shards may go
    usable = len(games) - len(prepared.missing) - len(prepared.rejected)
    return HeldOutSamples(usable, samples)
