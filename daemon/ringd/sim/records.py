"""Simulated game records: one finished game as a dict or a JSONL line, in either dialect.

The camel dialect is RingRift's canonical record (like ``shared/fixtures/ringrift-golden``),
the snake dialect its GPU selfplay output. Also the checks of the config and dialect
arguments every generator takes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ringd.boards import BOARDS, CONFIGS, BoardShape, Cell, canvas_from_cell
from ringd.sim.game import RULES, Game, Move

Dialect = Literal["camel", "snake"]
# Move serialisation styles: "full" carries every canonical field (nulls included) like
# the exported golden record, "sparse" only the fields that are set like the
# fsm-generated ones, "raw" is the GPU selfplay tuple form (snake dialect only).
MoveStyle = Literal["full", "sparse", "raw"]


def parse_config(config: str) -> tuple[BoardShape, int]:
    """Split ``"{board}_{n}p"`` into its board and player count; ``ValueError`` if unknown."""
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(CONFIGS)}")
    board, players = config.rsplit("_", 1)
    return BOARDS[board], int(players[:-1])


def check_configs(configs: Sequence[str] | None) -> list[str]:
    """The configs to draw games from, deduplicated (None: all); ``ValueError`` if any is unknown."""
    if configs is None:
        return list(CONFIGS)
    out = list(dict.fromkeys(configs))
    if not out:
        raise ValueError("configs must not be empty")
    for config in out:
        parse_config(config)
    return out


def check_dialect(dialect: str) -> str:
    """``dialect`` if it is camel, snake or mixed; ``ValueError`` otherwise."""
    if dialect not in ("camel", "snake", "mixed"):
        raise ValueError(f"dialect must be camel, snake or mixed, not {dialect!r}")
    return dialect


def ordered_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Games per config in :data:`CONFIGS` order, configs without games left out."""
    return {c: counts[c] for c in CONFIGS if counts.get(c)}


_PASS_PREFIXES = ("no_", "skip_")
_RAW_PASS_TYPES = frozenset({"NO_ACTION", "SKIP"})


def is_pass_move(move: Mapping[str, object]) -> bool:
    """Whether a move (camel/canonical or raw snake form) is a pass whose target is a placeholder."""
    kind = move.get("type")
    if isinstance(kind, str):
        return kind.startswith(_PASS_PREFIXES)
    return move.get("move_type") in _RAW_PASS_TYPES


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


def _iso(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def _pos(cell: Cell) -> dict[str, int]:
    if len(cell) == 2:
        return {"x": cell[0], "y": cell[1]}
    return {"x": cell[0], "y": cell[1], "z": cell[2]}


def _canonical_move(
    m: Move, number: int, think: int, style: MoveStyle, placeholder: dict[str, int | None]
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


def _raw_move(board: BoardShape, m: Move) -> dict[str, object]:
    """A move as RingRift's GPU selfplay writes it with ``--no-canonical-export``:
    positions are ``[row, col]`` on the board's canvas (:func:`ringd.boards.canvas_from_cell`),
    null where there is none (a pass has no destination)."""
    kind = _RAW_TYPES.get(m.type)
    if kind is None:
        kind = "SKIP" if m.type.startswith("skip_") else "NO_ACTION"
    return {
        "move_type": kind,
        "from_pos": list(canvas_from_cell(board, m.frm)) if m.frm is not None else None,
        "to_pos": list(canvas_from_cell(board, m.to)) if m.to is not None else None,
        "player": m.player,
    }


def _default_moves(rng: random.Random, board: BoardShape) -> int:
    low, high, mode = RULES[board.name].moves
    return round(rng.triangular(low, high, mode))


def _pick_style(rng: random.Random, dialect: Dialect) -> MoveStyle:
    r = rng.random()
    if dialect == "camel":
        return "full" if r < 0.7 else "sparse"
    return "raw" if r < 0.6 else ("full" if r < 0.9 else "sparse")


def make_record(
    rng: random.Random,
    config: str,
    dialect: Dialect,
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
    return make_record_in_style(rng, config, dialect, game_id, moves, _pick_style(rng, dialect))


@dataclass(frozen=True, slots=True)
class _Finished:
    """What both dialects say about one played game."""

    game: Game
    moves: list[dict[str, object]]
    ai_type: str
    started_ms: int
    duration_ms: int
    winner: int | None
    winner_roll: float  # the draw that chose whether there is a winner


def make_record_in_style(
    rng: random.Random,
    config: str,
    dialect: Dialect,
    game_id: str,
    n_moves: int | None,
    style: MoveStyle,
) -> dict[str, object]:
    """:func:`make_record` with the move serialisation ``style`` chosen by the caller."""
    board, players = parse_config(config)
    if n_moves is None:
        n_moves = _default_moves(rng, board)
    if n_moves < 0:
        raise ValueError("moves must be >= 0")
    game = Game(rng, board, players)
    played = game.play(n_moves)
    ai_type = rng.choice(_AI_TYPES)
    think_lo, think_hi = _THINK_MS[ai_type]
    thinks = [rng.randint(think_lo, think_hi) if think_hi else 0 for _ in played]
    placeholder: dict[str, int | None] = {"x": 0, "y": 0}
    if board.kind == "hex" and style == "full":
        placeholder["z"] = None

    if style == "raw":
        move_list: list[dict[str, object]] = [_raw_move(board, m) for m in played]
    else:
        move_list = [
            _canonical_move(m, i, t, style, placeholder)
            for i, (m, t) in enumerate(zip(played, thinks, strict=True), start=1)
        ]

    started = _EPOCH_MS + rng.randrange(60 * 86_400_000)
    duration = sum(thinks) + rng.randint(2, 40) * max(1, len(played))
    r = rng.random()
    winner: int | None = rng.randint(1, players) if r < 0.82 else None
    finished = _Finished(game, move_list, ai_type, started, duration, winner, r)
    if dialect == "snake":
        return _snake_record(rng, game_id, finished)
    return _camel_record(rng, config, game_id, style, finished)


def _snake_record(rng: random.Random, game_id: str, f: _Finished) -> dict[str, object]:
    board, players = f.game.board, f.game.players
    return {
        "game_id": game_id,
        "board_type": board.name,
        "board_size": board.board_size,
        "num_players": players,
        # GPU selfplay writes 0 for a draw.
        "winner": f.winner if f.winner is not None else 0,
        "move_count": len(f.moves),
        "max_moves": 10_000,
        "status": "completed",
        "victory_type": rng.choice(_VICTORY_TYPES) if f.winner else "stalemate",
        "engine_mode": rng.choice(("gpu_heuristic", "gpu_heuristic", "gpu_policy", "random-only")),
        "moves": f.moves,
        "initial_state": {
            "board_type": board.name,
            "num_players": players,
            "rings_per_player": f.game.rules.rings,
            "current_player": 1,
            "current_phase": "ring_placement",
        },
        "timestamp": _iso(f.started_ms + f.duration_ms),
        "source": "gpu_selfplay",
    }


def _camel_record(
    rng: random.Random, config: str, game_id: str, style: MoveStyle, f: _Finished
) -> dict[str, object]:
    game = f.game
    players = game.players
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
            entry["aiType"] = f.ai_type
            entry["aiDifficulty"] = difficulty
        else:
            entry["aiDifficulty"] = difficulty
            entry["aiType"] = f.ai_type
        players_list.append(entry)

    record: dict[str, object] = {
        "id": game_id,
        "boardType": game.board.name,
        "numPlayers": players,
        "isRated": False,
        "players": players_list,
    }
    # Finished games without a winner appear both with "winner": null and without the key.
    if f.winner is not None or f.winner_roll < 0.91:
        record["winner"] = f.winner
    record["outcome"] = rng.choice(_OUTCOMES) if f.winner is not None else "ring_elimination"
    record["finalScore"] = {
        "ringsEliminated": {str(n): game.eliminated[n] for n in range(1, players + 1)},
        "territorySpaces": {str(n): game.territory[n] for n in range(1, players + 1)},
        "ringsRemaining": {str(n): game.in_hand[n] for n in range(1, players + 1)},
    }
    ended = f.started_ms + f.duration_ms
    record["startedAt"] = _iso(f.started_ms)
    record["endedAt"] = _iso(ended)
    record["totalMoves"] = len(f.moves)
    record["totalDurationMs"] = f.duration_ms
    record["moves"] = f.moves
    record["metadata"] = {
        "recordVersion": "1.0.0",
        "createdAt": _iso(ended + rng.randint(1, 5000)),
        "source": "self_play",
        "tags": [
            "selfplay",
            "fsm-canonical" if style == "sparse" else "canonical",
            config,
            f.ai_type,
        ],
    }
    return record


def make_small_record(
    rng: random.Random, config: str, dialect: Dialect, game_id: str
) -> dict[str, object]:
    """A tiny valid game (about 150-300 bytes serialised) for corpora of a million games."""
    # Minimal but valid: the fields ingest needs, a winner and one or two moves.
    board, players = parse_config(config)
    # Raw snake moves are shorter but its header longer; both land near 150-300 bytes.
    n_moves = rng.randint(1, 2) if dialect == "camel" else rng.choice((1, 1, 2))
    played = Game(rng, board, players).play(n_moves)
    winner = rng.randint(1, players)
    if dialect == "snake":
        return {
            "game_id": game_id,
            "board_type": board.name,
            "board_size": board.board_size,
            "num_players": players,
            "winner": winner,
            "move_count": len(played),
            "moves": [_raw_move(board, m) for m in played],
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
