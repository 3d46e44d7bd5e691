"""Reading the window's games back from their files, trusting only bytes whose key matches.

Files can be rewritten, truncated or deleted after the ledger indexed them, so the
span (path, offset, length) only says where the game *was*. Each line read is hashed
and compared with the span's key; anything else (a missing file, a short read, other
bytes) makes the game missing. A missing game is reported, never trained on.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ringd.records import game_key
from ringd.train.spec import GameSpan


@dataclass(frozen=True, slots=True)
class Missing:
    """A game of the window that could not be read back; ``index`` is its window position."""

    index: int
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReadGames:
    lines: dict[int, bytes]  # window position -> the game's line (key checked, no newline)
    missing: list[Missing]


def read_games(spans: Sequence[GameSpan], indices: Sequence[int]) -> ReadGames:
    """Read the games at window positions ``indices`` of ``spans``, checking each key.

    One open file per path, reads in offset order (sequential on disk); a file that
    cannot be opened makes all its games missing with the OS error as the reason.
    """
    by_path: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_path[spans[i].path].append(i)
    lines: dict[int, bytes] = {}
    missing: list[Missing] = []
    for path, members in by_path.items():
        members.sort(key=lambda i: spans[i].offset)
        for i, line, reason in _read_file(path, [spans[i] for i in members], members):
            if line is not None:
                lines[i] = line
            else:
                missing.append(Missing(i, spans[i].seq, reason))
    missing.sort(key=lambda m: m.index)
    return ReadGames(lines, missing)


def _read_file(
    path: str, spans: list[GameSpan], indices: list[int]
) -> Iterator[tuple[int, bytes | None, str]]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        for i in indices:
            yield i, None, f"unreadable file: {e.strerror or e}"
        return
    try:
        for i, span in zip(indices, spans, strict=True):
            try:
                line = os.pread(fd, span.length, span.offset)
            except OSError as e:
                yield i, None, f"read failed: {e.strerror or e}"
                continue
            if len(line) != span.length:
                yield i, None, f"short read: {len(line)} of {span.length} bytes (file truncated)"
            elif game_key(line) != span.key_bytes:
                yield i, None, "key mismatch: the bytes at the span are another game"
            else:
                yield i, line, ""
    finally:
        os.close(fd)
