"""A job's window: how many games, and the spans file listing them (daemon side).

The window is a config's `size` most recent games up to the job's last sequence
number, less the held-out slice (``ringd.train.holdout``). It never holds more than
``training.window.max_games`` games: a backlog of new games larger than that trains
on the newest ones, and the older ones are *skipped* (counted and reported; the
job's success still moves the watermark past them).

The spans file (:mod:`ringd.train.spans`) is built from the previous job's when it
can be: the windows of consecutive jobs of a config overlap in all but the games
that arrived between them, so the new file is the old one's tail (the records at
or after the new window's first game, copied as bytes) plus the new games read
from the ledger. The daemon's work then grows with the new games, not the window.
The old file is usable while nothing it lists has changed since it was written:
the config's ``spans_version`` in the ledger counts span moves, re-keyed games and
aliases folded in, and the held-out fraction and the window's start must fit too.
Otherwise (the first job, after a change) the window is read from the ledger whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ringd.ledger import Ledger, SpanColumns
from ringd.train.holdout import buckets_of, held_out_buckets
from ringd.train.spans import (
    SpansError,
    first_at_or_after,
    read_header,
    read_records,
    record_dtype,
    write_spans,
)
from ringd.train.spec import SpansFile
from ringd.train.window import window_games

SPANS_FILE = "window.spans"


@dataclass(frozen=True, slots=True)
class WindowSize:
    size: int  # the most recent games the window is drawn from (held-out ones left out)
    skipped: int  # new games older than the window: not trained on


def window_size(
    total: int,
    new_games: int,
    *,
    min_games: int,
    max_games: int,
    alpha: float,
    beta: float,
) -> WindowSize:
    """The taper's window, widened to the job's new games but never past `max_games`."""
    size = window_games(total, min_games=min_games, max_games=max_games, alpha=alpha, beta=beta)
    if new_games > size:
        size = min(new_games, max_games)
    return WindowSize(size, max(0, new_games - size))


@dataclass(frozen=True, slots=True)
class Built:
    spans: SpansFile
    start: int  # the sequence number of the window's oldest game (0: from the first)
    extended: str | None  # the earlier spans file whose tail was reused, if any
    reused: int  # records copied from it
    read: int  # games read from the ledger (held-out ones not counted)
    seconds: float


def build_window(
    db: Ledger,
    config: str,
    last_seq: int,
    size: int,
    fraction: float,
    out: Path,
    earlier: Sequence[Path] = (),
) -> Built:
    """Write the spans file of the `size` most recent games of `config` up to `last_seq`,
    held-out games left out, to `out`; extend the first usable of `earlier` if any."""
    started = time.monotonic()
    buckets = held_out_buckets(fraction)
    version = db.spans_version(config)
    start = db.window_start(config, last_seq, size)
    chunks: list[bytes] = []
    files: list[tuple[int, str]] = []
    extended: str | None = None
    reused = 0
    after = start - 1 if start else 0
    for path in earlier:
        try:
            header = read_header(path)
            meta = header.meta
            fits = (
                meta.get("config") == config
                and meta.get("spans_version") == version
                and meta.get("holdout_buckets") == buckets
                and isinstance(meta.get("from_seq"), int)
                and isinstance(meta.get("last_seq"), int)
                and meta["from_seq"] <= start
                and meta["last_seq"] <= last_seq
            )
            if not fits:
                continue
            first = first_at_or_after(path, header.count, start)
            chunks.append(read_records(path, first, header.count - first))
        except (OSError, SpansError, ValueError):
            continue  # gone or torn: try the next, or read the window whole
        files = list(header.files)
        extended, reused = str(path), header.count - first
        after = max(after, meta["last_seq"])
        break
    chunks.append(_records(db, config, after, last_seq, buckets, files))
    meta_out = {
        "config": config,
        "from_seq": start,
        "last_seq": last_seq,
        "size": size,
        "spans_version": version,
        "holdout_buckets": buckets,
    }
    count, sha256 = write_spans(out, chunks, files, meta_out)
    return Built(
        SpansFile(path=str(out), count=count, sha256=sha256),
        start,
        extended,
        reused,
        count - reused,
        time.monotonic() - started,
    )


def _records(
    db: Ledger,
    config: str,
    after: int,
    last_seq: int,
    buckets: int,
    files: list[tuple[int, str]],
) -> bytes:
    """The spans records of a config's games with `after` < seq <= `last_seq`, held-out
    ones left out; `files` gains the files they name that it lacks.

    A whole window is read here for a config's first job: 500,000 games. They come
    from SQLite a column at a time (`Ledger.span_columns`) and go into the records'
    array, `file` holding the ledger's file id until it is replaced by the file's place
    in `files`.
    """
    parts = [_parse(c) for c in db.span_columns(config, after, last_seq)]
    records = np.concatenate(parts) if parts else np.empty(0, record_dtype())
    if np.any(records["seq"][1:] <= records["seq"][:-1]):
        records = records[np.argsort(records["seq"], kind="stable")]
    records = records[buckets_of(records["key"]) >= buckets]
    index = {file_id: i for i, (file_id, _) in enumerate(files)}
    named = set(np.unique(records["file"]).tolist())
    for file_id, path in sorted(db.paths(named - index.keys()).items()):
        index[file_id] = len(files)
        files.append((file_id, path))
    if not named <= index.keys():
        raise LookupError(f"{config}: games name files the ledger does not list")
    ids = np.fromiter(index, np.int64, len(index))
    order = np.argsort(ids)
    places = np.fromiter(index.values(), np.uint32, len(index))[order]
    records["file"] = places[np.searchsorted(ids[order], records["file"])]
    return records.tobytes()


def _parse(columns: SpanColumns) -> np.ndarray:
    """The records of a stretch of games (`file`: the ledger's file ids)."""
    out = np.empty(columns.count, record_dtype())
    out["key"] = np.frombuffer(columns.keys, "V16", columns.count)
    for field, text in (
        ("seq", columns.seqs),
        ("offset", columns.offsets),
        ("length", columns.lengths),
        ("file", columns.file_ids),
    ):
        values = np.fromstring(text, out.dtype[field], sep=",")
        if len(values) != columns.count:
            raise LookupError(f"the ledger gave {len(values)} {field}s for {columns.count} games")
        out[field] = values
    return out
