"""Reading the window's games back from their files, trusting only bytes whose key matches.

Files can be rewritten, truncated or deleted after the ledger indexed them, so the
span (path, offset, length) only says where the game *was*. Each line read is hashed
and compared with the span's key; anything else (a missing file, a short read, other
bytes) makes the game missing. A missing game is reported, never trained on.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ringd.records import DEFAULT_RULES, Rules, game_key
from ringd.train.spans import WindowSpans
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


def read_games(
    spans: WindowSpans | Sequence[GameSpan],
    indices: Iterable[int],
    rules: Rules = DEFAULT_RULES,
) -> ReadGames:
    """Read the games at window positions ``indices`` of ``spans``, checking each key.

    ``rules`` key the lines read (``records.game_key``): the board aliases of the
    daemon that counted them (the spec's ``board_aliases``), so that a game under a
    site's own alias is found, not missing. One open file per path, reads in offset
    order (sequential on disk); a file that cannot be opened makes all its games
    missing with the OS error as the reason.
    """
    if not isinstance(spans, WindowSpans):
        spans = WindowSpans.from_games(spans)
    records = spans.records
    by_file: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by_file[int(records["file"][i])].append(int(i))
    lines: dict[int, bytes] = {}
    missing: list[Missing] = []
    for file, members in by_file.items():
        members.sort(key=lambda i: int(records["offset"][i]))
        for i, line, reason in _read_file(spans, spans.paths[file], members, rules):
            if line is not None:
                lines[i] = line
            else:
                missing.append(Missing(i, int(records["seq"][i]), reason))
    missing.sort(key=lambda m: m.index)
    return ReadGames(lines, missing)


def _read_file(
    spans: WindowSpans, path: str, indices: list[int], rules: Rules
) -> Iterator[tuple[int, bytes | None, str]]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        for i in indices:
            yield i, None, f"unreadable file: {e.strerror or e}"
        return
    try:
        for i in indices:
            offset, length = spans.offset(i), spans.length(i)
            try:
                line = os.pread(fd, length, offset)
            except OSError as e:
                yield i, None, f"read failed: {e.strerror or e}"
                continue
            if len(line) != length:
                yield i, None, f"short read: {len(line)} of {length} bytes (file truncated)"
            elif game_key(line, rules) != spans.key(i):
                yield i, None, "key mismatch: the bytes at the span are another game"
            else:
                yield i, line, ""
    finally:
        os.close(fd)
