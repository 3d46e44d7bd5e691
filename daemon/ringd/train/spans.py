"""The spans file: a job's window in a compact binary form (torch-free).

The daemon writes one per job (``state_dir/jobs/<id>/window.spans``) and names it in
the job spec (``spans: {path, count, sha256}``); the trainer memory-maps it. Listing
a 500,000-game window as JSON took 90 MB and seconds to write, parse and validate;
this file takes 40 bytes a game, and the daemon builds it from the previous job's
file plus the new games (:mod:`ringd.service.jobs`), so starting a job costs the
daemon time in proportion to the new games, not the window.

Layout (little-endian)::

    0   8  magic b"RINGDSPN"
    8   4  format (1)
    12  4  record size (40)
    16  8  count: records
    24  8  offset of the records (64)
    32  8  offset of the trailer
    40  8  trailer bytes
    48 16  reserved (zero)
    64     records, oldest first (seq strictly increasing), each
           seq i64, key 16 bytes, offset u64, length u32, file u32
           (file: an index into the trailer's file table)
    ...    trailer: UTF-8 JSON {"files": [[ledger file id, path], ...], "meta": {...}}

Paths that are not UTF-8 travel as ``os.fsdecode`` strings (lone surrogates, escaped
by JSON). ``meta`` is the writer's own (the daemon keeps what it needs to extend the
file for the next job); readers ignore it. The spec's ``sha256`` is of the whole file.

The writer takes whole records as bytes (the daemon packs them with numpy:
:mod:`ringd.windows`); the reader side (:class:`WindowSpans`) is numpy, for the
trainer, and :func:`iter_spans` plain Python, for tools and custom trainers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ringd.fsutil import write_atomically

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Buffer

    from ringd.train.spec import GameSpan, SpansFile

MAGIC = b"RINGDSPN"
FORMAT = 1
RECORD = struct.Struct("<q16sQII")  # seq, key, offset, length, file
HEADER = struct.Struct("<8sIIQQQQ16x")
HEADER_BYTES = HEADER.size  # 64
assert RECORD.size == 40 and HEADER_BYTES == 64


class SpansError(Exception):
    """The spans file is unreadable, truncated, or not the one the spec names."""


@dataclass(frozen=True, slots=True)
class SpansHeader:
    """What the daemon needs of an earlier spans file to extend it (no records read)."""

    count: int
    files: list[tuple[int, str]]  # (ledger file id, path), indexed by a record's `file`
    meta: dict[str, Any]


def write_spans(
    path: Path,
    chunks: Sequence[bytes | memoryview],
    files: Sequence[tuple[int, str]],
    meta: dict[str, Any],
) -> tuple[int, str]:
    """Write a spans file atomically (temporary name, fsync, rename); (count, sha256).

    ``chunks`` are whole records (``RECORD.size`` bytes each, any number per chunk),
    oldest first. The folder is fsynced too: the spec naming this file comes next.
    """
    for chunk in chunks:
        if len(chunk) % RECORD.size:
            raise ValueError(f"a chunk of {len(chunk)} bytes is not whole records")
    count = sum(len(c) for c in chunks) // RECORD.size
    trailer = json.dumps({"files": [list(f) for f in files], "meta": meta}).encode()
    trailer_at = HEADER_BYTES + count * RECORD.size
    header = HEADER.pack(MAGIC, FORMAT, RECORD.size, count, HEADER_BYTES, trailer_at, len(trailer))
    digest = hashlib.sha256()

    def write(f: BinaryIO) -> None:
        for part in (header, *chunks, trailer):
            digest.update(part)
            f.write(part)

    write_atomically(path, write)
    return count, digest.hexdigest()


def _header(data: Buffer, size: int, path: Path | str) -> tuple[int, int, int, int]:
    if size < HEADER_BYTES:
        raise SpansError(f"{path}: {size} bytes, shorter than a spans file's header")
    magic, fmt, record, count, records_at, trailer_at, trailer_bytes = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SpansError(f"{path}: not a spans file (magic {magic!r})")
    if fmt != FORMAT or record != RECORD.size:
        raise SpansError(f"{path}: spans format {fmt} with {record}-byte records is not {FORMAT}")
    if (
        records_at != HEADER_BYTES
        or trailer_at != records_at + count * RECORD.size
        or trailer_at + trailer_bytes != size
    ):
        raise SpansError(f"{path}: truncated or inconsistent ({size} bytes, {count} records)")
    return count, records_at, trailer_at, trailer_bytes


def _trailer(raw: bytes, path: Path | str) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    try:
        trailer = json.loads(raw)
        files = [(int(i), str(p)) for i, p in trailer["files"]]
        meta = trailer.get("meta") or {}
    except (ValueError, KeyError, TypeError) as e:
        raise SpansError(f"{path}: unreadable file table: {e}") from None
    if not isinstance(meta, dict):
        raise SpansError(f"{path}: meta is not an object")
    return files, meta


def read_header(path: Path) -> SpansHeader:
    """The count, file table and meta of a spans file (its records are not read)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        count, _, trailer_at, trailer_bytes = _header(f.read(HEADER_BYTES), size, path)
        f.seek(trailer_at)
        files, meta = _trailer(f.read(trailer_bytes), path)
    return SpansHeader(count, files, meta)


def read_records(path: Path, first: int, count: int) -> bytes:
    """Records ``first .. first + count - 1`` of a spans file, as bytes."""
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES + first * RECORD.size)
        data = f.read(count * RECORD.size)
    if len(data) != count * RECORD.size:
        raise SpansError(f"{path}: short read of records {first}..{first + count - 1}")
    return data


def seq_at(path: Path, index: int) -> int:
    """The sequence number of record ``index``."""
    seq: int = struct.unpack("<q", read_records(path, index, 1)[:8])[0]
    return seq


def first_at_or_after(path: Path, count: int, seq: int) -> int:
    """The index of the first record whose seq is >= ``seq`` (``count`` if none):
    a binary search reading log2(count) records."""
    lo, hi = 0, count
    with open(path, "rb") as f:
        while lo < hi:
            mid = (lo + hi) // 2
            f.seek(HEADER_BYTES + mid * RECORD.size)
            (found,) = struct.unpack("<q", f.read(8))
            if found < seq:
                lo = mid + 1
            else:
                hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class Span:
    """Where a game was read (a ledger row, or a record of a spans file read in pure
    Python by small tools and custom trainers): check its key before trusting the bytes."""

    seq: int
    key: bytes
    path: str
    offset: int
    length: int


def iter_spans(path: Path | str) -> Iterator[Span]:
    """Every game of a spans file, oldest first, without numpy (a custom trainer's way to
    read a spec's ``spans``; check its ``sha256`` first if the file may be tampered with)."""
    path = Path(path)
    header = read_header(path)
    paths = [p for _, p in header.files]
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        for _ in range(0, header.count, 4096):
            block = f.read(min(4096, header.count - _) * RECORD.size)
            for seq, key, offset, length, file in RECORD.iter_unpack(block):
                yield Span(seq, key, paths[file], offset, length)


# -- the trainer's side (numpy) ---------------------------------------------------------


def record_dtype() -> np.dtype[Any]:
    import numpy as np

    return np.dtype(
        [("seq", "<i8"), ("key", "V16"), ("offset", "<u8"), ("length", "<u4"), ("file", "<u4")]
    )


@dataclass(frozen=True)
class WindowSpans:
    """A window's games as arrays, oldest first: from a spans file or a spec's ``games``.

    ``records`` has :func:`record_dtype` (memory-mapped when read from a file); a
    record's ``file`` indexes ``paths``.
    """

    records: npt.NDArray[Any]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def seq(self) -> npt.NDArray[np.int64]:
        return self.records["seq"]

    @property
    def keys(self) -> npt.NDArray[Any]:
        """The keys as a (n,) array of 16-byte voids."""
        return self.records["key"]

    def key(self, i: int) -> bytes:
        return bytes(self.records["key"][i])

    def path(self, i: int) -> str:
        return self.paths[int(self.records["file"][i])]

    def offset(self, i: int) -> int:
        return int(self.records["offset"][i])

    def length(self, i: int) -> int:
        return int(self.records["length"][i])

    @staticmethod
    def from_games(games: Sequence[GameSpan]) -> WindowSpans:
        """The spans of a spec's inline ``games`` list."""
        import numpy as np

        index: dict[str, int] = {}
        records = np.zeros(len(games), record_dtype())
        if games:
            records["seq"] = [g.seq for g in games]
            records["key"] = np.frombuffer(b"".join(g.key_bytes for g in games), "V16")
            records["offset"] = [g.offset for g in games]
            records["length"] = [g.length for g in games]
            records["file"] = [index.setdefault(g.path, len(index)) for g in games]
        return WindowSpans(records, list(index))

    @staticmethod
    def from_file(ref: SpansFile) -> WindowSpans:
        """Memory-map the spans file a spec names, checking its checksum and count."""
        import mmap

        import numpy as np

        path = Path(ref.path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise SpansError(f"{path}: {e.strerror or e}") from None
        digest = hashlib.sha256(mapped).hexdigest()
        if digest != ref.sha256:
            raise SpansError(f"{path}: sha256 {digest} is not the spec's {ref.sha256}")
        count, records_at, trailer_at, _ = _header(mapped, size, path)
        if count != ref.count:
            raise SpansError(f"{path}: {count} records, the spec says {ref.count}")
        files, _ = _trailer(bytes(mapped[trailer_at:]), path)
        records = np.frombuffer(mapped, record_dtype(), count=count, offset=records_at)
        if count and int(records["file"].max()) >= len(files):
            raise SpansError(
                f"{path}: a record names file {int(records['file'].max())} "
                f"of a table of {len(files)}"
            )
        return WindowSpans(records, [p for _, p in files])

    def take(self, indices: npt.NDArray[np.int64] | Sequence[int]) -> WindowSpans:
        """The spans at ``indices`` (in that order), sharing the file table."""
        import numpy as np

        return WindowSpans(self.records[np.asarray(indices, np.int64)], self.paths)
