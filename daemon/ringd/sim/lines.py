"""Distinct JSONL game lines at disk speed, for corpora and live writers.

``json.dumps`` of a 30 KB record costs far more than writing it, so records are
serialised once around an id marker and every line splices in a fresh id.
"""

from __future__ import annotations

import json
import random

from ringd.sim.records import Dialect, make_record, make_small_record

_ID_MARK = "@@ringd-sim-game-id@@"
_QUOTED_MARK = json.dumps(_ID_MARK).encode()
# Enough distinct move lists per (config, dialect) that a corpus does not look like a
# handful of games repeated, few enough that building them stays a few seconds.
_POOL_SIZE = 48
# Game n's line: LINE_FORMAT % (head, prefix, n, middle, prefix, n, tail), with the
# three pieces from Splicer.parts and the prefix from Ids.prefix. A format, not a
# function: it runs in write_corpus' hot loop, where a call per game would show.
LINE_FORMAT = b"%s%s%012x%s%s%012x%s"


class Splicer:
    """Lines made by splicing a fresh game id into pre-serialised records.

    A pool of records per (config, dialect), each serialised once around an id
    marker, lets a corpus reach disk speed while every line stays distinct (the id
    is unique). Pool entries are built lazily, so small corpora pay only for what
    they use.
    """

    def __init__(self, rng: random.Random, *, small: bool, size: int = _POOL_SIZE) -> None:
        self._rng = rng
        self._small = small
        self._size = size
        self._pool: dict[tuple[str, Dialect], list[tuple[bytes, bytes, bytes] | None]] = {}

    def parts(self, config: str, dialect: Dialect) -> tuple[bytes, bytes, bytes]:
        """The bytes around the two places of the id in a random pooled record."""
        slots = self._pool.get((config, dialect))
        if slots is None:
            slots = self._pool[(config, dialect)] = [None] * self._size
        i = self._rng.randrange(self._size)
        entry = slots[i]
        if entry is None:
            entry = slots[i] = self._build(config, dialect)
        return entry

    def _build(self, config: str, dialect: Dialect) -> tuple[bytes, bytes, bytes]:
        rng = self._rng
        if self._small:
            record = _with_move_id(make_small_record(rng, config, dialect, _ID_MARK))
            text = json.dumps(record, separators=(",", ":")).encode()
        else:
            record = _with_move_id(make_record(rng, config, dialect, _ID_MARK))
            # RingRift's GPU selfplay writes json.dumps defaults (", " and ": "); some
            # of its lines keep that spacing so readers see both forms.
            spaced = dialect == "snake" and rng.random() < 0.3
            text = (
                json.dumps(record) if spaced else json.dumps(record, separators=(",", ":"))
            ).encode()
        head, middle, tail = text.split(_QUOTED_MARK)
        return head + b'"', b'"' + middle + b'"', b'"' + tail + b"\n"


def _with_move_id(record: dict[str, object]) -> dict[str, object]:
    # A game's identity is its moves (ringd.records): the pooled move lists would make
    # every line of a pool entry the same game, so the first move carries the game's
    # id too, as the moves of RingRift's soak writer carry an `id`.
    moves = record["moves"]
    assert isinstance(moves, list) and moves and isinstance(moves[0], dict)
    moves[0]["id"] = _ID_MARK
    return record


class Ids:
    """uuid4-shaped game ids: a random prefix per file or writer and a counter, so ids
    never repeat within one and practically never across them."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[bytes] = set()

    def prefix(self) -> bytes:
        """A prefix not handed out before; a line's id is it and a 12-digit hex counter."""
        while True:
            r = self._rng.getrandbits(76)
            text = "%08x-%04x-4%03x-%x%03x-" % (  # noqa: UP031 -- one format for five fields
                r >> 44,
                (r >> 28) & 0xFFFF,
                (r >> 16) & 0xFFF,
                8 + ((r >> 12) & 0x3),
                r & 0xFFF,
            )
            raw = text.encode()
            if raw not in self._used:
                self._used.add(raw)
                return raw
