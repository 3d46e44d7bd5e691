"""Selfplay simulator: RingRift-shaped game records for the demo, tests and benchmarks.

Three ways to make games:

* :func:`make_record` / :func:`game_line`: one realistic finished game as a dict or
  as a JSONL line, in the canonical camelCase dialect (like the records in
  ``shared/fixtures/ringrift-golden``) or in the snake_case dialect of RingRift's
  GPU selfplay.
* :func:`write_corpus`: many files of games at disk speed, for ingest benchmarks
  and for tests that need a million games.
* :func:`run_writers`: live writer processes appending games at a chosen rate,
  for latency benchmarks, the demo and the tail/watch tests (lines written in two
  pieces, writers killed in the middle of a line).

Coordinates
-----------
Camel moves (and snake moves exported in canonical form) use ``{"x", "y"}`` on
square boards (``0 <= x, y < side``) and cube coordinates ``{"x", "y", "z"}``
with ``x + y + z == 0`` on hex boards (``max(|x|, |y|, |z|) <= radius``).

Raw snake moves (``move_type`` / ``from_pos`` / ``to_pos``) use ``[y, x]`` lists:
on square boards the row and the column, on hex boards the cube ``y`` and ``x``
(``z = -x - y`` is implied; on hex boards the values can be negative).
:func:`cell_from_raw` turns such a list back into a cell.

Pass moves (camel types starting with ``no_`` or ``skip_``, raw ``NO_ACTION`` and
``SKIP``) carry a placeholder destination that says nothing about the board:
``{"x": 0, "y": 0}`` (on hex boards sometimes with ``"z": null``), raw ``[0, 0]``.
:func:`is_pass_move` recognises them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

from ringd.boards import (
    BOARDS,
    CONFIGS,
    BoardShape,
    Cell,
    board_cells,
    cell_from_raw,
)

__all__ = [
    "BOARDS",
    "CONFIGS",
    "BoardShape",
    "CorpusInfo",
    "WritersResult",
    "cell_from_raw",
    "game_line",
    "is_pass_move",
    "make_record",
    "parse_config",
    "run_writers",
    "sim_main",
    "write_corpus",
    "writer_main",
]

Dialect = Literal["camel", "snake"]


_DIRECTIONS: dict[str, tuple[Cell, ...]] = {
    "square": ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)),
    "hex": ((1, -1, 0), (1, 0, -1), (0, 1, -1), (-1, 1, 0), (-1, 0, 1), (0, -1, 1)),
}


@dataclass(frozen=True)
class _BoardRules:
    rings: int  # rings per player
    reach: int  # longest plain move the simulator tries
    line: int  # markers in a scoring line
    moves: tuple[int, int, int]  # triangular(low, high, mode) of a game's length


# Lengths follow what RingRift selfplay produces; they set the serialized sizes
# (about 10-100 KB a line in the camel dialect), which the ingest benchmarks rely on.
_RULES: dict[str, _BoardRules] = {
    "square8": _BoardRules(rings=18, reach=4, line=4, moves=(40, 120, 70)),
    "square19": _BoardRules(rings=36, reach=9, line=4, moves=(150, 400, 240)),
    "hex8": _BoardRules(rings=18, reach=4, line=4, moves=(60, 150, 100)),
    "hexagonal": _BoardRules(rings=48, reach=8, line=4, moves=(150, 400, 260)),
}


def parse_config(config: str) -> tuple[BoardShape, int]:
    """Split ``"{board}_{n}p"`` into its board and player count; ``ValueError`` if unknown."""
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(CONFIGS)}")
    board, players = config.rsplit("_", 1)
    return BOARDS[board], int(players[:-1])


_PASS_PREFIXES = ("no_", "skip_")
_RAW_PASS_TYPES = frozenset({"NO_ACTION", "SKIP"})


def is_pass_move(move: Mapping[str, object]) -> bool:
    """Whether a move (camel/canonical or raw snake form) is a pass whose target is a placeholder."""
    kind = move.get("type")
    if isinstance(kind, str):
        return kind.startswith(_PASS_PREFIXES)
    return move.get("move_type") in _RAW_PASS_TYPES


# --------------------------------------------------------------------------- games


@dataclass(slots=True)
class _Move:
    type: str
    player: int
    to: Cell | None  # None: a pass, serialised as the placeholder
    frm: Cell | None = None
    capture: Cell | None = None
    placement_count: int | None = None
    placed_on_stack: bool | None = None
    line: tuple[Cell, ...] | None = None
    line_dir: Cell | None = None
    region: tuple[Cell, ...] | None = None
    eliminated: int | None = None


def _step(cell: Cell, d: Cell, k: int) -> Cell:
    if len(cell) == 2:
        return (cell[0] + d[0] * k, cell[1] + d[1] * k)
    return (cell[0] + d[0] * k, cell[1] + d[1] * k, cell[2] + d[2] * k)


class _Game:
    """A plausible RingRift move sequence.

    Not the rules engine: it keeps just enough state (who owns which stack, rings
    in hand) that moves start where the mover has a stack, land on the board and
    follow RingRift's turn structure (placement, movement or capture chain, line
    phase, territory phase), so the records look and size like real ones.
    """

    def __init__(self, rng: random.Random, board: BoardShape, players: int) -> None:
        self.rng = rng
        self.board = board
        self.players = players
        self.rules = _RULES[board.name]
        self.cells = board_cells(board)
        self.cell_set = frozenset(self.cells)
        self.dirs = _DIRECTIONS[board.kind]
        self.stacks: dict[Cell, int] = {}
        self.in_hand = [0] + [self.rules.rings] * players
        self.eliminated = [0] * (players + 1)
        self.territory = [0] * (players + 1)
        self.moves: list[_Move] = []

    def play(self, n_moves: int) -> list[_Move]:
        player = 1
        while len(self.moves) < n_moves:
            self._turn(player)
            player = player % self.players + 1
        del self.moves[n_moves:]
        return self.moves

    def _turn(self, p: int) -> None:
        rng, emit = self.rng, self.moves.append
        own = [c for c, owner in self.stacks.items() if owner == p]
        origin: Cell | None
        if self.in_hand[p] > 0 and (not own or rng.random() < 0.85):
            cell = rng.choice(self.cells)
            on_stack = cell in self.stacks
            count = 1 if on_stack else min(self.in_hand[p], rng.choice((1, 1, 1, 2, 3)))
            self.in_hand[p] -= count
            self.stacks[cell] = p
            emit(_Move("place_ring", p, cell, placement_count=count, placed_on_stack=on_stack))
            origin = cell
        else:
            emit(_Move("skip_placement" if self.in_hand[p] else "no_placement_action", p, None))
            origin = rng.choice(own) if own else None
            if own and rng.random() < 0.1:
                # A blocked player must eliminate from one of its stacks.
                emit(_Move("no_movement_action", p, None))
                emit(
                    _Move("forced_elimination", p, origin, placement_count=0, placed_on_stack=False)
                )
                self.eliminated[p] += 1
                origin = None
        landing = self._movement(p, origin) if origin is not None else None
        if origin is None and (not self.moves or self.moves[-1].type != "forced_elimination"):
            emit(_Move("no_movement_action", p, None))
        self._line_phase(p, landing)
        if rng.random() < 0.03:
            region = tuple(rng.sample(self.cells, rng.randint(1, 4)))
            self.territory[p] += len(region)
            emit(_Move("choose_territory_option", p, region[0], region=region))
        else:
            emit(_Move("no_territory_action", p, None))

    def _movement(self, p: int, origin: Cell) -> Cell | None:
        rng, cell_set, emit = self.rng, self.cell_set, self.moves.append
        for _ in range(6):
            d = rng.choice(self.dirs)
            if rng.random() < 0.22:
                a, b = rng.randint(1, 3), rng.randint(1, 3)
                target, land = _step(origin, d, a), _step(origin, d, a + b)
                if target in cell_set and land in cell_set:
                    emit(_Move("overtaking_capture", p, land, frm=origin, capture=target))
                    self._relocate(p, origin, land)
                    return self._capture_chain(p, land, target)
            else:
                dest = _step(origin, d, rng.randint(1, self.rules.reach))
                if dest in cell_set:
                    emit(_Move("move_stack", p, dest, frm=origin))
                    self._relocate(p, origin, dest)
                    if rng.random() < 0.1:
                        emit(_Move("skip_capture", p, None))
                    return dest
        emit(_Move("no_movement_action", p, None))
        return None

    def _capture_chain(self, p: int, at: Cell, target: Cell) -> Cell:
        rng = self.rng
        while rng.random() < 0.35:
            d = rng.choice(self.dirs)
            a = rng.randint(1, 3)
            nxt_target = _step(at, d, a)
            land = _step(at, d, a + rng.randint(1, 3))
            if nxt_target not in self.cell_set or land not in self.cell_set:
                break
            target = nxt_target if rng.random() < 0.7 else target
            self.moves.append(_Move("continue_capture_segment", p, land, frm=at, capture=target))
            self._relocate(p, at, land)
            at = land
        return at

    def _relocate(self, p: int, frm: Cell, to: Cell) -> None:
        self.stacks.pop(frm, None)
        self.stacks[to] = p

    def _line_phase(self, p: int, landing: Cell | None) -> None:
        rng, emit = self.rng, self.moves.append
        if landing is not None and rng.random() < 0.06:
            d = rng.choice(self.dirs)
            line = tuple(_step(landing, d, k) for k in range(self.rules.line))
            if all(c in self.cell_set for c in line):
                emit(_Move("choose_line_option", p, line[0], line=line, line_dir=d))
                self.territory[p] += len(line)
                self.eliminated[p] += 1
                emit(_Move("eliminate_rings_from_stack", p, landing, eliminated=1))
                return
        emit(_Move("no_line_action", p, None))


# --------------------------------------------------------------------------- records


_AI_TYPES = ("random", "heuristic", "mcts", "descent", "minimax", "neural")
_THINK_MS = {
    "random": (0, 0),
    "heuristic": (0, 30),
    "mcts": (40, 2500),
    "descent": (40, 2000),
    "minimax": (5, 400),
    "neural": (20, 900),
}
_OUTCOMES = ("ring_elimination", "ring_elimination", "territory_control", "last_player_standing")
_VICTORY_TYPES = ("ring_elimination", "ring_elimination", "territory", "lps")
_RAW_TYPES = {
    "place_ring": "PLACEMENT",
    "move_stack": "MOVEMENT",
    "overtaking_capture": "CAPTURE",
    "continue_capture_segment": "CHAIN_CAPTURE",
    "choose_line_option": "LINE_FORMATION",
    "eliminate_rings_from_stack": "ELIMINATION",
    "forced_elimination": "FORCED_ELIMINATION",
    "choose_territory_option": "TERRITORY_CLAIM",
}
# 2025-12-01T00:00:00Z: records carry plausible dates of the RingRift selfplay era.
_EPOCH_MS = 1_764_547_200_000

# Move serialisation styles: "full" carries every canonical field (nulls included) like
# the exported golden record, "sparse" only the fields that are set like the
# fsm-generated ones, "raw" is the GPU selfplay tuple form (snake dialect only).
_MoveStyle = Literal["full", "sparse", "raw"]


def _iso(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def _pos(cell: Cell) -> dict[str, int]:
    if len(cell) == 2:
        return {"x": cell[0], "y": cell[1]}
    return {"x": cell[0], "y": cell[1], "z": cell[2]}


def _canonical_move(
    m: _Move, number: int, think: int, style: _MoveStyle, placeholder: dict[str, int | None]
) -> dict[str, object]:
    to = _pos(m.to) if m.to is not None else dict(placeholder)
    lines: object = None
    markers: object = None
    if m.line is not None and m.line_dir is not None:
        markers = [_pos(c) for c in m.line]
        lines = [
            {
                "positions": [_pos(c) for c in m.line],
                "player": m.player,
                "length": len(m.line),
                "direction": _pos(m.line_dir),
            }
        ]
    regions: object = None
    if m.region is not None:
        regions = [
            {
                "spaces": [_pos(c) for c in m.region],
                "controllingPlayer": m.player,
                "isDisconnected": True,
            }
        ]
    eliminated: object = None
    if m.eliminated is not None:
        eliminated = [{"player": m.player, "count": m.eliminated}]
    if style == "full":
        return {
            "moveNumber": number,
            "player": m.player,
            "type": m.type,
            "thinkTimeMs": think,
            "from": _pos(m.frm) if m.frm is not None else None,
            "to": to,
            "captureTarget": _pos(m.capture) if m.capture is not None else None,
            "placementCount": m.placement_count,
            "placedOnStack": m.placed_on_stack,
            "formedLines": lines,
            "collapsedMarkers": markers,
            "disconnectedRegions": regions,
            "eliminatedRings": eliminated,
        }
    out: dict[str, object] = {
        "moveNumber": number,
        "player": m.player,
        "type": m.type,
        "thinkTimeMs": think,
    }
    if m.frm is not None:
        out["from"] = _pos(m.frm)
    out["to"] = to
    if m.capture is not None:
        out["captureTarget"] = _pos(m.capture)
    for key, value in (
        ("formedLines", lines),
        ("collapsedMarkers", markers),
        ("disconnectedRegions", regions),
        ("eliminatedRings", eliminated),
    ):
        if value is not None:
            out[key] = value
    return out


def _raw_move(m: _Move) -> dict[str, object]:
    kind = _RAW_TYPES.get(m.type)
    if kind is None:
        kind = "SKIP" if m.type.startswith("skip_") else "NO_ACTION"
    return {
        "move_type": kind,
        "from_pos": [m.frm[1], m.frm[0]] if m.frm is not None else None,
        "to_pos": [m.to[1], m.to[0]] if m.to is not None else [0, 0],
        "player": m.player,
    }


def _default_moves(rng: random.Random, board: BoardShape) -> int:
    low, high, mode = _RULES[board.name].moves
    return round(rng.triangular(low, high, mode))


def _pick_style(rng: random.Random, dialect: Dialect) -> _MoveStyle:
    r = rng.random()
    if dialect == "camel":
        return "full" if r < 0.7 else "sparse"
    return "raw" if r < 0.6 else ("full" if r < 0.9 else "sparse")


def make_record(
    rng: random.Random,
    config: str,
    dialect: Literal["camel", "snake"],
    game_id: str,
    moves: int | None = None,
) -> dict[str, object]:
    """Make one realistic finished RingRift game of ``config`` (for example ``"hex8_3p"``).

    ``dialect="camel"`` gives a canonical record shaped like the golden fixtures (``id``,
    ``boardType``, ``numPlayers``, ``players``, ``winner``, ``moves``, ...);
    ``dialect="snake"`` a GPU selfplay record (``game_id``, ``board_type``, ``board_size``,
    ``num_players``, ...) whose moves are, chosen per game, raw ``move_type`` tuples
    or canonical move objects. ``moves`` fixes the number of moves; by default it is
    drawn per board like real games (square8 40-120, hex8 60-150, square19 and
    hexagonal 150-400). Everything random comes from ``rng``.
    """
    return _make_record(rng, config, dialect, game_id, moves, _pick_style(rng, dialect))


def _make_record(
    rng: random.Random,
    config: str,
    dialect: Dialect,
    game_id: str,
    n_moves: int | None,
    style: _MoveStyle,
) -> dict[str, object]:
    board, players = parse_config(config)
    if n_moves is None:
        n_moves = _default_moves(rng, board)
    if n_moves < 0:
        raise ValueError("moves must be >= 0")
    game = _Game(rng, board, players)
    played = game.play(n_moves)
    ai_type = rng.choice(_AI_TYPES)
    think_lo, think_hi = _THINK_MS[ai_type]
    thinks = [rng.randint(think_lo, think_hi) if think_hi else 0 for _ in played]
    placeholder: dict[str, int | None] = {"x": 0, "y": 0}
    if board.kind == "hex" and style == "full":
        placeholder["z"] = None

    if style == "raw":
        move_list: list[dict[str, object]] = [_raw_move(m) for m in played]
    else:
        move_list = [
            _canonical_move(m, i, t, style, placeholder)
            for i, (m, t) in enumerate(zip(played, thinks, strict=True), start=1)
        ]

    started = _EPOCH_MS + rng.randrange(60 * 86_400_000)
    duration = sum(thinks) + rng.randint(2, 40) * max(1, len(played))
    r = rng.random()
    winner: int | None = rng.randint(1, players) if r < 0.82 else None

    if dialect == "snake":
        return {
            "game_id": game_id,
            "board_type": board.name,
            "board_size": board.board_size,
            "num_players": players,
            # GPU selfplay writes 0 for a draw.
            "winner": winner if winner is not None else 0,
            "move_count": len(move_list),
            "max_moves": 10_000,
            "status": "completed",
            "victory_type": rng.choice(_VICTORY_TYPES) if winner else "stalemate",
            "engine_mode": rng.choice(
                ("gpu_heuristic", "gpu_heuristic", "gpu_policy", "random-only")
            ),
            "moves": move_list,
            "initial_state": {
                "board_type": board.name,
                "num_players": players,
                "rings_per_player": game.rules.rings,
                "current_player": 1,
                "current_phase": "ring_placement",
            },
            "timestamp": _iso(started + duration),
            "source": "gpu_selfplay",
        }

    difficulty = rng.randint(1, 10)
    numbered = rng.random() < 0.5
    players_list: list[dict[str, object]] = []
    for n in range(1, players + 1):
        entry: dict[str, object] = {
            "playerNumber": n,
            "username": f"Player {n}" if numbered else f"P{n + 1}",
            "playerType": "ai",
        }
        # The golden records disagree on the order of these two keys; so do we.
        if numbered:
            entry["aiType"] = ai_type
            entry["aiDifficulty"] = difficulty
        else:
            entry["aiDifficulty"] = difficulty
            entry["aiType"] = ai_type
        players_list.append(entry)

    record: dict[str, object] = {
        "id": game_id,
        "boardType": board.name,
        "numPlayers": players,
        "isRated": False,
        "players": players_list,
    }
    # Finished games without a winner appear both with "winner": null and without the key.
    if winner is not None or r < 0.91:
        record["winner"] = winner
    record["outcome"] = rng.choice(_OUTCOMES) if winner is not None else "ring_elimination"
    record["finalScore"] = {
        "ringsEliminated": {str(n): game.eliminated[n] for n in range(1, players + 1)},
        "territorySpaces": {str(n): game.territory[n] for n in range(1, players + 1)},
        "ringsRemaining": {str(n): game.in_hand[n] for n in range(1, players + 1)},
    }
    record["startedAt"] = _iso(started)
    record["endedAt"] = _iso(started + duration)
    record["totalMoves"] = len(move_list)
    record["totalDurationMs"] = duration
    record["moves"] = move_list
    record["metadata"] = {
        "recordVersion": "1.0.0",
        "createdAt": _iso(started + duration + rng.randint(1, 5000)),
        "source": "self_play",
        "tags": [
            "selfplay",
            "fsm-canonical" if style == "sparse" else "canonical",
            config,
            ai_type,
        ],
    }
    return record


def _small_record(
    rng: random.Random, config: str, dialect: Dialect, game_id: str
) -> dict[str, object]:
    # Minimal but valid: the fields ingest needs, a winner and one or two moves, so a
    # million games make a file of a couple of hundred megabytes.
    board, players = parse_config(config)
    # Raw snake moves are shorter but its header longer; both land near 150-300 bytes.
    n_moves = rng.randint(1, 2) if dialect == "camel" else rng.choice((1, 1, 2))
    played = _Game(rng, board, players).play(n_moves)
    winner = rng.randint(1, players)
    if dialect == "snake":
        return {
            "game_id": game_id,
            "board_type": board.name,
            "board_size": board.board_size,
            "num_players": players,
            "winner": winner,
            "move_count": len(played),
            "moves": [_raw_move(m) for m in played],
            "source": "gpu_selfplay",
        }
    placeholder: dict[str, int | None] = {"x": 0, "y": 0}
    return {
        "id": game_id,
        "boardType": board.name,
        "numPlayers": players,
        "winner": winner,
        "totalMoves": len(played),
        "moves": [
            {
                k: v
                for k, v in _canonical_move(m, i, 0, "sparse", placeholder).items()
                if k != "thinkTimeMs"
            }
            for i, m in enumerate(played, 1)
        ],
    }


def game_line(record: Mapping[str, object]) -> bytes:
    """Serialise a record as one compact JSONL line (UTF-8, ending in ``b"\\n"``)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# --------------------------------------------------------------------------- fast lines


_ID_MARK = "@@ringd-sim-game-id@@"
_QUOTED_MARK = json.dumps(_ID_MARK).encode()
# Enough distinct move lists per (config, dialect) that a corpus does not look like a
# handful of games repeated, few enough that building them stays a few seconds.
_POOL_SIZE = 48


class _Splicer:
    """Lines made by splicing a fresh game id into pre-serialised records.

    ``json.dumps`` of a 30 KB record costs far more than writing it; a pool of
    records per (config, dialect), each serialised once around an id marker, lets a
    corpus reach disk speed while every line stays distinct (the id is unique).
    Pool entries are built lazily, so small corpora pay only for what they use.
    """

    def __init__(self, rng: random.Random, *, small: bool, size: int = _POOL_SIZE) -> None:
        self._rng = rng
        self._small = small
        self._size = size
        self._pool: dict[tuple[str, Dialect], list[tuple[bytes, bytes] | None]] = {}

    def parts(self, config: str, dialect: Dialect) -> tuple[bytes, bytes]:
        """The bytes before and after the id of a random pooled record."""
        slots = self._pool.get((config, dialect))
        if slots is None:
            slots = self._pool[(config, dialect)] = [None] * self._size
        i = self._rng.randrange(self._size)
        entry = slots[i]
        if entry is None:
            entry = slots[i] = self._build(config, dialect)
        return entry

    def _build(self, config: str, dialect: Dialect) -> tuple[bytes, bytes]:
        rng = self._rng
        if self._small:
            record = _small_record(rng, config, dialect, _ID_MARK)
            text = json.dumps(record, separators=(",", ":")).encode()
        else:
            record = make_record(rng, config, dialect, _ID_MARK)
            # RingRift's GPU selfplay writes json.dumps defaults (", " and ": "); some
            # of its lines keep that spacing so readers see both forms.
            spaced = dialect == "snake" and rng.random() < 0.3
            text = (
                json.dumps(record) if spaced else json.dumps(record, separators=(",", ":"))
            ).encode()
        before, after = text.split(_QUOTED_MARK)
        return before + b'"', b'"' + after + b"\n"


class _Ids:
    """uuid4-shaped game ids: a random prefix per file or writer and a counter, so ids
    never repeat within one and practically never across them."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[bytes] = set()

    def prefix(self) -> bytes:
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


# --------------------------------------------------------------------------- layout

# Directory shapes seen under RingRift's data/selfplay, plus a few no tool expects:
# ingest must count every *.jsonl however its folder is named.
_HOSTS = ("gh200-a", "gh200-b", "lambda-h100-3", "vast-4090-17", "node07")
_ODD_DIRS = (
    "Old Runs (2025-12)",
    "ünïcødé-runs",
    "deep/er/and/deeper/still",
    "-leading-dash",
    "tmp.d",
    "with space/..dots..",
)
_DirKind = Literal["gpu", "mcts", "hybrid", "daemon", "cluster", "odd"]
_DIR_KINDS: tuple[_DirKind, ...] = ("gpu", "mcts", "hybrid", "daemon", "cluster", "odd")
_DIR_WEIGHTS = (25, 15, 15, 15, 20, 10)


def _corpus_dir(rng: random.Random, kind: _DirKind, label: str) -> Path:
    k = rng.randint(1, 6)
    if kind == "gpu":
        return Path("gpu") / label
    if kind == "cluster":
        return Path(f"cluster_{k}") / rng.choice(_HOSTS)
    if kind == "odd":
        return Path(rng.choice(_ODD_DIRS))
    return Path(f"{kind}_{k}")


def _dialect_for(kind: _DirKind, dialect: str) -> Dialect | None:
    """The dialect a directory's files use; None means mixed line by line."""
    if dialect == "camel":
        return "camel"
    if dialect == "snake" or kind == "gpu":
        return "snake"
    if kind in ("mcts", "daemon"):
        return "camel"
    return None


def _check_dialect(dialect: str) -> str:
    if dialect not in ("camel", "snake", "mixed"):
        raise ValueError(f"dialect must be camel, snake or mixed, not {dialect!r}")
    return dialect


def _check_configs(configs: Sequence[str] | None) -> list[str]:
    if configs is None:
        return list(CONFIGS)
    out = list(dict.fromkeys(configs))
    if not out:
        raise ValueError("configs must not be empty")
    for config in out:
        parse_config(config)
    return out


def _ordered_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {c: counts[c] for c in CONFIGS if counts.get(c)}


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`write_corpus` wrote: the files, the games and bytes in them, games per config."""

    files: list[Path]
    games: int
    bytes: int
    per_config: dict[str, int]


def write_corpus(
    root: Path,
    files: int,
    games_per_file: int,
    *,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    small: bool = False,
) -> CorpusInfo:
    """Write ``files`` JSONL files of ``games_per_file`` games each under ``root``, fast.

    Files land in RingRift-like folders (``gpu/<config>/``, ``mcts_<n>/``,
    ``hybrid_<n>/``, ``daemon_<n>/``, ``cluster_<n>/<host>/``) and a few oddly named
    ones. Most files hold one config, some a mix. ``dialect`` is ``"camel"``,
    ``"snake"`` or ``"mixed"`` (by folder: ``gpu/`` snake, ``mcts_``/``daemon_``
    camel, the rest line by line). ``small=True`` writes tiny valid games (about
    150-300 bytes) for tests of a million games. Files are created afresh ("wb").
    Output depends only on the arguments: the same seed gives the same bytes.
    """
    if files < 0 or games_per_file < 0:
        raise ValueError("files and games_per_file must be >= 0")
    cfgs = _check_configs(configs)
    _check_dialect(dialect)
    rng = random.Random(seed)
    splicer = _Splicer(rng, small=small)
    ids = _Ids(rng)
    counts = dict.fromkeys(cfgs, 0)
    paths: list[Path] = []
    total_bytes = 0
    for index in range(files):
        kind = rng.choices(_DIR_KINDS, _DIR_WEIGHTS)[0]
        single = rng.random() < 0.7 or len(cfgs) == 1
        file_cfgs = [rng.choice(cfgs)] if single else cfgs
        label = file_cfgs[0] if single else "mixed"
        fixed = _dialect_for(kind, dialect)
        folder = root / _corpus_dir(rng, kind, label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{label}_{index:05d}.jsonl"
        paths.append(path)
        prefix = ids.prefix()
        total_bytes += _write_games(
            path, rng, splicer, prefix, file_cfgs, fixed, games_per_file, counts
        )
    return CorpusInfo(paths, files * games_per_file, total_bytes, _ordered_counts(counts))


def _write_games(
    path: Path,
    rng: random.Random,
    splicer: _Splicer,
    prefix: bytes,
    cfgs: list[str],
    fixed: Dialect | None,
    games: int,
    counts: dict[str, int],
) -> int:
    # The hot loop of write_corpus: a few bytes concatenations per game; no JSON work.
    written = 0
    parts = splicer.parts
    choice = rng.choice
    rand = rng.random
    single = cfgs[0] if len(cfgs) == 1 else None
    with open(path, "wb", buffering=1 << 20) as out:
        write = out.write
        for n in range(games):
            config = single or choice(cfgs)
            dialect: Dialect = fixed or ("camel" if rand() < 0.5 else "snake")
            before, after = parts(config, dialect)
            line = b"%s%s%012x%s" % (before, prefix, n, after)
            write(line)
            written += len(line)
            counts[config] += 1
    return written


# --------------------------------------------------------------------------- live writers


class _StopFlag(Protocol):
    def is_set(self) -> bool: ...


# The pause inside a line written in two pieces: long enough for a reader polling
# every few milliseconds to see the unfinished line, short against the write rate.
_PARTIAL_PAUSE_S = 0.01


def _writer_dir(index: int) -> tuple[_DirKind, Path, str]:
    kind = _DIR_KINDS[index % len(_DIR_KINDS)]
    if kind == "gpu":
        return kind, Path("gpu"), f"selfplay_w{index:03d}"
    if kind == "cluster":
        return kind, Path(f"cluster_{index % 3}") / _HOSTS[index % len(_HOSTS)], f"w{index:03d}"
    if kind == "odd":
        return kind, Path(_ODD_DIRS[index % len(_ODD_DIRS)]), f"w{index:03d}"
    return kind, Path(f"{kind}_{index}"), "games"


def _write_all(out: io.FileIO, data: bytes) -> None:
    # An unbuffered file may in principle take fewer bytes than offered.
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0 :]


def writer_main(
    root: Path,
    index: int,
    *,
    rate: float,
    duration: float | None = None,
    games: int | None = None,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    partial_every: int = 0,
    kill_mid_line: bool = False,
    small: bool = False,
    rotate_every: int = 0,
    stop: _StopFlag | None = None,
) -> dict[str, Any]:
    """Be writer ``index``: append games to this writer's file(s) under ``root``.

    Writes ``rate`` games per second (``rate <= 0``: as fast as possible) until
    ``duration`` seconds have passed, ``games`` games are written, or ``stop`` is
    set (whichever comes first; with none of them it runs until ``stop``). Files
    are opened with "ab", unbuffered; each game is one ``write`` of the whole line,
    except every ``partial_every``-th game which is written in two pieces with a
    short pause between. ``rotate_every=k`` starts a new file every k games.
    ``kill_mid_line`` ends by writing the first part of one more line (not
    counted), so that the parent can kill the process with the line unfinished.

    Game content follows ``seed``; game ids also take fresh OS randomness, so runs
    appending to the same files never repeat a line. Returns a JSON-able summary:
    ``files`` (path -> complete games), ``per_config``, ``games``, ``bytes`` and
    ``partial`` (the path left with an unfinished line, or None).
    """
    cfgs = _check_configs(configs)
    _check_dialect(dialect)
    if games is not None and games < 0:
        raise ValueError("games must be >= 0")
    rng = random.Random(f"ringd-sim/{seed}/{index}")
    splicer = _Splicer(rng, small=small, size=16)
    ids = _Ids(random.Random(int.from_bytes(os.urandom(16), "big")))
    kind, rel_dir, stem = _writer_dir(index)
    folder = root / rel_dir
    folder.mkdir(parents=True, exist_ok=True)
    fixed = _dialect_for(kind, dialect)

    per_file: dict[str, int] = {}
    counts = dict.fromkeys(cfgs, 0)
    written_bytes = 0
    part = 0
    in_file = 0
    parent = os.getppid()
    out: io.FileIO | None = None
    out_name = ""
    prefix = ids.prefix()

    def next_line(n: int) -> tuple[str, bytes]:
        config = rng.choice(cfgs)
        dialect_now: Dialect = fixed or ("camel" if rng.random() < 0.5 else "snake")
        before, after = splicer.parts(config, dialect_now)
        return config, b"%s%s%012x%s" % (before, prefix, n, after)

    def open_next() -> tuple[io.FileIO, str]:
        name = f"{stem}_{part:04d}.jsonl" if rotate_every > 0 else f"{stem}.jsonl"
        path = str(folder / name)
        per_file.setdefault(path, 0)
        return open(path, "ab", buffering=0), path

    interval = 1.0 / rate if rate > 0 else 0.0
    start = time.monotonic()
    deadline = start + duration if duration is not None else math.inf
    due = start
    n = 0
    try:
        out, out_name = open_next()
        while games is None or n < games:
            if (stop is not None and stop.is_set()) or os.getppid() != parent:
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if interval and due > now:
                # Short naps keep the stop flag and the deadline responsive.
                time.sleep(min(due, deadline, now + 0.1) - now)
                continue
            if interval:
                # After a stall, catch up for at most a second rather than bursting.
                due = max(due + interval, now - 1.0)
            if rotate_every > 0 and in_file >= rotate_every:
                out.close()
                part += 1
                in_file = 0
                out, out_name = open_next()
            config, line = next_line(n)
            if partial_every > 0 and (n + 1) % partial_every == 0:
                cut = rng.randrange(1, len(line) - 1)
                _write_all(out, line[:cut])
                time.sleep(_PARTIAL_PAUSE_S)
                _write_all(out, line[cut:])
            else:
                _write_all(out, line)
            n += 1
            in_file += 1
            written_bytes += len(line)
            counts[config] += 1
            per_file[out_name] += 1
        partial: str | None = None
        if kill_mid_line:
            _config, line = next_line(n)
            _write_all(out, line[: max(1, len(line) // 2)])
            partial = out_name
    finally:
        if out is not None:
            out.close()
    return {
        "files": per_file,
        "per_config": _ordered_counts(counts),
        "games": n,
        "bytes": written_bytes,
        "partial": partial,
    }


class _Flag:
    """A stop flag a signal handler can set without taking any lock."""

    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True


_CHILD_FLAG = "--writer-child"


def _report(message: Mapping[str, object]) -> bool:
    """Print one JSON line to the parent; False if the parent stopped listening."""
    try:
        print(json.dumps(message), flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    return True


def _writer_child_main(spec: str) -> int:
    """Body of one writer process: run :func:`writer_main`, print its summary as one JSON line."""
    kwargs: dict[str, Any] = json.loads(spec)
    kwargs["root"] = Path(kwargs["root"])
    stop = _Flag()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    # Ctrl-C is the parent's business; it tells writers to stop with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = writer_main(stop=stop, **kwargs)
    except Exception:
        return 1 if _report({"error": traceback.format_exc()}) else 2
    if not _report(summary):
        return 0  # the parent is gone; nobody is left to tell
    if kwargs.get("kill_mid_line"):
        # Wait to be SIGKILLed with the line unfinished; leave on our own only if the
        # parent is gone or never does it.
        parent = os.getppid()
        give_up = time.monotonic() + 60.0
        while time.monotonic() < give_up and os.getppid() == parent:
            time.sleep(0.05)
    return 0


@dataclass(frozen=True)
class WritersResult:
    """What :func:`run_writers` wrote: complete games per file and per config.

    ``partial_files`` are the files left ending in an unfinished line (``kill_mid_line``).
    """

    files: list[Path]
    games: int
    bytes: int
    per_file: dict[Path, int]
    per_config: dict[str, int]
    partial_files: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0


def run_writers(
    root: Path,
    *,
    writers: int,
    rate: float,
    duration: float | None = None,
    games: int | None = None,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    partial_every: int = 0,
    kill_mid_line: bool = False,
    small: bool = False,
    rotate_every: int = 0,
) -> WritersResult:
    """Run ``writers`` writer processes appending games under ``root``; wait for them all.

    Together they write about ``rate`` games per second (``rate <= 0``: each as fast
    as it can), each into its own file(s) in a RingRift-like folder, until
    ``duration`` seconds or ``games`` games in total; with neither, until SIGINT or
    SIGTERM reaches this process (while it runs in the main thread), which stops
    the writers cleanly and the result is returned. See :func:`writer_main` for
    ``partial_every``, ``rotate_every`` and the line format. With ``kill_mid_line``
    each writer ends by writing half a line and is then SIGKILLed, so its file ends
    unfinished.

    Writers are OS processes, ``python -m ringd.sim`` children in their own session
    (a terminal's Ctrl-C reaches only this process, which stops them with SIGTERM).
    Raises ``RuntimeError`` if a writer fails.
    """
    if writers < 1:
        raise ValueError("writers must be >= 1")
    if games is not None and games < 0:
        raise ValueError("games must be >= 0")
    cfgs = _check_configs(configs)
    _check_dialect(dialect)
    quotas: list[int | None] = [None] * writers
    if games is not None:
        writers = max(1, min(writers, games))
        quotas = [games // writers + (1 if i < games % writers else 0) for i in range(writers)]
    per_writer_rate = rate / writers if rate > 0 else 0.0

    # The children import ringd from wherever this process did, installed or not.
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)

    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []

    stopping: list[bool] = []

    def stop_all() -> None:
        stopping.append(True)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    summaries: list[dict[str, Any]] = []
    errors: list[str] = []
    restore = _stop_on_signals(stop_all)
    try:
        for i in range(writers):
            spec = {
                "root": str(root),
                "index": i,
                "rate": per_writer_rate,
                "duration": duration,
                "games": quotas[i],
                "seed": seed,
                "dialect": dialect,
                "configs": cfgs,
                "partial_every": partial_every,
                "kill_mid_line": kill_mid_line,
                "small": small,
                "rotate_every": rotate_every,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ringd.sim", _CHILD_FLAG, json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
            )
            if stopping:
                stop_all()  # a signal came while writers were still being started
        # Reading one child after another is fine: they all run meanwhile, and a
        # kill_mid_line child just waits until its turn to be killed.
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            report = proc.stdout.readline()
            if kill_mid_line and report:
                proc.kill()
            proc.stdout.close()
            proc.wait()
            message: dict[str, Any] = json.loads(report) if report.strip() else {}
            if "error" in message:
                errors.append(f"writer {i} failed:\n{message['error']}")
            elif not message:
                errors.append(f"writer {i} exited ({proc.returncode}) without a report")
            else:
                summaries.append(message)
    finally:
        restore()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise RuntimeError("\n".join(errors))

    per_file: dict[Path, int] = {}
    per_config: dict[str, int] = {}
    partial_files: list[Path] = []
    for summary in summaries:
        for name, count in summary["files"].items():
            per_file[Path(name)] = per_file.get(Path(name), 0) + count
        for config, count in summary["per_config"].items():
            per_config[config] = per_config.get(config, 0) + count
        if summary["partial"] is not None:
            partial_files.append(Path(summary["partial"]))
    return WritersResult(
        files=sorted(per_file),
        games=sum(s["games"] for s in summaries),
        bytes=sum(s["bytes"] for s in summaries),
        per_file=per_file,
        per_config=_ordered_counts(per_config),
        partial_files=sorted(partial_files),
        elapsed_s=time.monotonic() - started,
    )


def _stop_on_signals(on_stop: Callable[[], None]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``on_stop`` while writers run; returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: FrameType | None) -> None:
        on_stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


# --------------------------------------------------------------------------- CLI


def _corpus_spec(text: str) -> tuple[int, int]:
    try:
        files, games = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FILES:GAMES_PER_FILE, got {text!r}") from None
    if files < 0 or games < 0:
        raise argparse.ArgumentTypeError("FILES and GAMES_PER_FILE must be >= 0")
    return files, games


def _config_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown config(s) {', '.join(bad) or '(none)'}; known: {', '.join(CONFIGS)}"
        )
    return names


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringd sim",
        description=(
            "Selfplay simulator: write RingRift-shaped game records (JSONL, one game a "
            "line) under OUT_DIR, either live from writer processes at a chosen rate "
            "or as a bulk corpus at disk speed."
        ),
        epilog=(
            "examples:\n"
            "  ringd sim data/selfplay --writers 4 --rate 20            # until Ctrl-C\n"
            "  ringd sim data/selfplay --writers 64 --rate 1000 --duration 30\n"
            "  ringd sim /tmp/sp --games 500 --configs hex8_2p,square8_3p --partial-every 10\n"
            "  ringd sim /tmp/sp --games 40 --kill-mid-line             # files end mid-line\n"
            "  ringd sim /tmp/corpus --corpus 100:300                   # ~1 GB, 30,000 games\n"
            "  ringd sim /tmp/corpus --corpus 1000:1000 --small         # 1M tiny games\n"
            f"\nconfigs: {', '.join(CONFIGS)}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="root of the selfplay tree")
    common = parser.add_argument_group("games")
    common.add_argument(
        "--dialect",
        choices=("camel", "snake", "mixed"),
        default="mixed",
        help="record dialect: camelCase canonical, snake_case GPU selfplay, or both (default)",
    )
    common.add_argument(
        "--configs",
        type=_config_list,
        metavar="A,B",
        help="comma-separated configs to draw games from (default: all twelve)",
    )
    common.add_argument("--seed", type=int, default=0, help="seed for game content (default 0)")
    common.add_argument(
        "--small",
        action="store_true",
        help="tiny valid games (~150-300 bytes) instead of real-sized",
    )
    live = parser.add_argument_group("live writers (the default mode)")
    live.add_argument(
        "--writers", type=int, default=4, metavar="N", help="writer processes (default 4)"
    )
    live.add_argument(
        "--rate",
        type=float,
        default=20.0,
        metavar="GAMES_PER_S",
        help="games per second, all writers together; <= 0: as fast as possible (default 20)",
    )
    until = live.add_mutually_exclusive_group()
    until.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    until.add_argument("--games", type=int, metavar="N", help="stop after N games in total")
    live.add_argument(
        "--partial-every",
        type=int,
        default=0,
        metavar="K",
        help="write every K-th game in two pieces with a pause between",
    )
    live.add_argument(
        "--kill-mid-line",
        action="store_true",
        help="finish by SIGKILLing each writer after half a line, leaving its file unfinished",
    )
    live.add_argument(
        "--rotate-every",
        type=int,
        default=0,
        metavar="K",
        help="start a new file every K games per writer",
    )
    bulk = parser.add_argument_group("bulk corpus")
    bulk.add_argument(
        "--corpus",
        type=_corpus_spec,
        metavar="FILES:GAMES_PER_FILE",
        help="write FILES files of GAMES_PER_FILE games each as fast as the disk allows, then exit",
    )
    return parser


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _summary(
    mode: str,
    games: int,
    nbytes: int,
    files: int,
    seconds: float,
    per_config: Mapping[str, int],
) -> str:
    # Bulk mode is judged by throughput, live mode by its game rate.
    if mode == "corpus":
        speed = f"{nbytes / 1e6 / seconds:.0f} MB/s" if seconds > 0 else "-"
    else:
        speed = f"{games / seconds:.1f} games/s" if seconds > 0 else "-"
    configs = " ".join(f"{c}={n}" for c, n in per_config.items()) or "-"
    return (
        f"ringd sim {mode}: {games} games, {_human_bytes(nbytes)}, {files} files "
        f"in {seconds:.1f} s ({speed}); {configs}"
    )


def sim_main(argv: Sequence[str] | None = None) -> int:
    """Run ``ringd sim`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_CHILD_FLAG] and len(argv) == 2:
        # run_writers' children come in this way; not part of the documented CLI.
        return _writer_child_main(argv[1])
    parser = _build_parser()
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.corpus is not None:
        files, per_file = args.corpus
        info = write_corpus(
            out_dir,
            files,
            per_file,
            seed=args.seed,
            dialect=args.dialect,
            configs=args.configs,
            small=args.small,
        )
        seconds = time.monotonic() - started
        print(_summary("corpus", info.games, info.bytes, len(info.files), seconds, info.per_config))
        return 0
    if args.writers < 1:
        parser.error("--writers must be >= 1")
    if args.duration is None and args.games is None:
        print(f"ringd sim: writing under {out_dir} until Ctrl-C", file=sys.stderr)
    result = run_writers(
        out_dir,
        writers=args.writers,
        rate=args.rate,
        duration=args.duration,
        games=args.games,
        seed=args.seed,
        dialect=args.dialect,
        configs=args.configs,
        partial_every=args.partial_every,
        kill_mid_line=args.kill_mid_line,
        small=args.small,
        rotate_every=args.rotate_every,
    )
    line = _summary(
        "writers",
        result.games,
        result.bytes,
        len(result.files),
        result.elapsed_s,
        result.per_config,
    )
    if result.partial_files:
        line += f"; {len(result.partial_files)} files end mid-line"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(sim_main())
