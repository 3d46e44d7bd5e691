"""Cursor rules: read each file's new complete lines exactly once into the ledger.

A file's cursor is its (device, inode), the offset after its last complete
line, and a fingerprint of the bytes before that offset. The decision of where
to read from is a pure function of the cursor and a fresh stat; only
`index_file` touches the disk.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import xxhash

from ringd.ledger import Added, Cursor, FileRow, GameRow, Ledger, RejectRow, merge_added
from ringd.records import Game, Reason, Rules, line_key, parse_line, rekeyed

FINGERPRINT_SPAN = 4096
CHUNK_BYTES = 8 * 1024 * 1024  # games committed per transaction, at most about
# Bytes per read. Small enough that the buffers come from the heap and are reused:
# fresh 8 MiB buffers are mapped and faulted in anew for each read, which cost more
# CPU than parsing the games in them.
READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileStat:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileChange(enum.Enum):
    UNCHANGED = "unchanged"  # same identity, size and mtime: nothing to read
    EMPTY = "empty"  # an unknown file with no bytes yet: ignored
    NEW = "new"  # an unknown path, or a new inode at a known path: from 0
    TRUNCATED = "truncated"  # shorter than the cursor: from 0
    VERIFY = "verify"  # grew or was touched: fingerprint intact -> read on, else from 0


def compare(cursor: Cursor | None, st: FileStat) -> FileChange:
    """Where reading must start, from the cursor and a fresh stat alone."""
    if cursor is None or (cursor.dev, cursor.ino) != (st.dev, st.ino):
        return FileChange.EMPTY if st.size == 0 and cursor is None else FileChange.NEW
    if st.size < cursor.offset:
        return FileChange.TRUNCATED
    if (st.size, st.mtime_ns) == (cursor.size, cursor.mtime_ns):
        return FileChange.UNCHANGED
    return FileChange.VERIFY


def fingerprint(fd: int, offset: int) -> bytes:
    """A hash of the first and last FINGERPRINT_SPAN bytes before `offset`.

    A writer that reopens with "w" and writes past the old size changes these
    bytes (the head holds the first game, the tail the last one read).
    """
    head = os.pread(fd, min(FINGERPRINT_SPAN, offset), 0)
    start = max(0, offset - FINGERPRINT_SPAN)
    tail = os.pread(fd, offset - start, start)
    return xxhash.xxh3_64_digest(head + tail) if offset else b""


@dataclass(slots=True)
class Chunk:
    """Complete lines read in one go: (offset, bytes without newline) each."""

    # Views into the bytes read (no copy per line); bytes for a line longer than a read.
    lines: list[tuple[int, bytes | memoryview]]
    too_long: list[tuple[int, int]]  # (offset, length) of lines over the limit
    end: int  # the offset after the last complete line
    ascii: bool = False  # every byte of these lines is ASCII (no UTF-8 check needed)


def read_chunks(
    fd: int, start: int, max_line: int, chunk_bytes: int = READ_BYTES
) -> Iterator[Chunk]:
    """The complete lines from `start` on; a trailing partial line is left unread.

    A line longer than `max_line` is skipped to its newline without being held
    in memory whole, and reported in `too_long` once its newline arrives.
    """
    pos = start  # the file offset of the first line not yet yielded
    while data := os.pread(fd, chunk_bytes, pos):
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            # A whole chunk without a newline: one line longer than chunk_bytes.
            end = yield from _long_line(fd, pos, data, max_line, chunk_bytes)
            if end is None:
                return  # not terminated yet: it waits like any partial line
            pos = end
            continue
        # Lines are views into the bytes read, not copies. The partial line after
        # the last newline is read again with the next chunk instead of being
        # joined to it, which would copy the whole chunk.
        view = memoryview(data)
        find = data.find
        lines: list[tuple[int, bytes | memoryview]] = []
        too_long: list[tuple[int, int]] = []
        start = 0
        while start <= last_nl:
            nl = find(b"\n", start)
            if nl - start > max_line:
                too_long.append((pos + start, nl - start))
            else:
                lines.append((pos + start, view[start:nl]))
            start = nl + 1
        pos += start
        yield Chunk(lines, too_long, pos, data.isascii())


def _long_line(
    fd: int, pos: int, first: bytes, max_line: int, chunk_bytes: int
) -> Generator[Chunk, None, int | None]:
    """The line at `pos` whose first `chunk_bytes` hold no newline: held while it fits
    `max_line`, else only measured. Returns the offset after it, or None when its
    newline has not been written yet."""
    length = len(first)
    held: list[bytes] | None = [first] if length <= max_line else None
    while data := os.pread(fd, chunk_bytes, pos + length):
        nl = data.find(b"\n")
        if nl >= 0:
            n = length + nl
            if held is not None and n <= max_line:
                held.append(data[:nl])
                yield Chunk([(pos, b"".join(held))], [], pos + n + 1)
            else:
                yield Chunk([], [(pos, n)], pos + n + 1)
            return pos + n + 1
        length += len(data)
        if held is not None and length <= max_line:
            held.append(data)
        else:
            held = None
    return None


@dataclass(slots=True)
class FileResult:
    """What indexing one file did."""

    change: FileChange
    stat: FileStat | None = None
    bytes_read: int = 0
    games: int = 0  # complete game lines read (copies included)
    new_games: dict[str, Added] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)

    @property
    def new_total(self) -> int:
        return sum(a.count for a in self.new_games.values())


def index_file(
    ledger: Ledger,
    path: str,
    rules: Rules,
    *,
    commit_bytes: int = CHUNK_BYTES,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> FileResult:
    """Read what is new in one file and commit it, chunk by chunk, with its cursor.

    `rules` say how lines become games (aliases, unfinished statuses, the
    line size limit). `stop` ends reading after the chunk in hand is committed
    (shutdown). Raises OSError when the file cannot be opened or read (the
    caller reports it).
    """
    row = ledger.file(path)
    cursor = row.cursor if row else None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # fstat, not stat: the path may have been replaced since it was listed.
        st = FileStat.of(os.fstat(fd))
        change = compare(cursor, st)
        result = FileResult(change, st)
        if change in (FileChange.UNCHANGED, FileChange.EMPTY):
            return result
        start = 0
        if change is FileChange.VERIFY:
            assert cursor is not None
            if fingerprint(fd, cursor.offset) == cursor.fingerprint:
                start = cursor.offset
        file_id = ledger.track_file(path, st.dev, st.ino)
        # A read from 0 of a known file replaces what its earlier reads rejected.
        restart = start == 0 and row is not None
        # Only a read from 0 (a moved, copied or rewritten file) can bring back a
        # game counted under its line's hash before schema 4; appends are new.
        with_line_keys = start == 0 and ledger.line_keys

        games: list[GameRow] = []
        rejects: list[RejectRow] = []
        pending_bytes = 0
        offset = start
        for chunk in read_chunks(fd, start, rules.max_line):
            _classify(chunk, rules, with_line_keys, games, rejects, result)
            pending_bytes += chunk.end - offset
            result.bytes_read += chunk.end - offset
            if on_bytes is not None:
                on_bytes(chunk.end - offset)
            offset = chunk.end
            if pending_bytes >= commit_bytes:
                _commit(ledger, file_id, fd, st, offset, games, rejects, result, restart)
                games, rejects, pending_bytes, restart = [], [], 0, False
                if stop is not None and stop.is_set():
                    break
        # Always commit the last stat, even with nothing read, so the next scan
        # of an unchanged file is stat-only.
        _commit(ledger, file_id, fd, st, offset, games, rejects, result, restart)
        return result
    finally:
        os.close(fd)


def _classify(
    chunk: Chunk,
    rules: Rules,
    with_line_keys: bool,
    games: list[GameRow],
    rejects: list[RejectRow],
    result: FileResult,
) -> None:
    for offset, line in chunk.lines:
        parsed = parse_line(line, rules, ascii=chunk.ascii)
        if isinstance(parsed, Game):
            games.append(
                GameRow(
                    parsed.config,
                    parsed.key,
                    offset,
                    len(line),
                    parsed.game_id,
                    line_key(line) if with_line_keys else None,
                )
            )
            result.games += 1
        else:
            rejects.append(RejectRow(offset, len(line), parsed.reason, parsed.detail))
    for offset, length in chunk.too_long:
        rejects.append(RejectRow(offset, length, Reason.TOO_LONG, f"{length} bytes"))


def _commit(
    ledger: Ledger,
    file_id: int,
    fd: int,
    st: FileStat,
    offset: int,
    games: list[GameRow],
    rejects: list[RejectRow],
    result: FileResult,
    restart: bool,
) -> None:
    cursor = Cursor(st.dev, st.ino, offset, fingerprint(fd, offset), st.size, st.mtime_ns)
    merge_added(result.new_games, ledger.commit(file_id, cursor, games, rejects, restart=restart))
    for r in rejects:
        result.rejects[r.reason] = result.rejects.get(r.reason, 0) + 1


def rekey_file(ledger: Ledger, row: FileRow, rules: Rules) -> int:
    """Give the games whose span lies in this file the key `rules` make of their bytes.

    For ledgers of schema < 4 (keys were hashes of whole lines) and for games
    counted under a board name that has since become an alias. A span is
    re-keyed only when its bytes still are the game its current key names
    (`records.key_candidates`); spans whose bytes changed keep their key.
    Returns the games re-keyed. Raises OSError when the file cannot be read
    (it stays marked and is tried again by the next scan).
    """
    fd = os.open(row.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        keys: list[tuple[int, int, bytes]] = []
        for config_id, seq, key, offset, length in ledger.spans_in(row.id):
            line = os.pread(fd, length, offset)
            if len(line) != length:
                continue
            new = rekeyed(line, key, rules)
            if new is not None and new != key:
                keys.append((config_id, seq, new))
    finally:
        os.close(fd)
    return ledger.rekey(row.id, keys)
