"""The built-in ``grid`` encoder: RingRift records of both dialects onto a square grid.

Boards
    Square boards by ``(x, y)``: row ``y``, column ``x``. Hex boards by cube
    coordinates ``(x, y, z)`` (``x + y + z = 0``, radius r: hex8 4, hexagonal 12) on a
    ``(2r+1) x (2r+1)`` grid: row ``y + r``, column ``x + r`` (axial coordinates;
    ``z`` is implied). Grid cells off the hexagon are zero in every plane, and the
    on-board mask plane (plane 0) tells the network where the board is.

Moves
    Canonical objects ``{"type", "player", "from": {x, y[, z]}, "to": {...}}`` and the
    GPU selfplay's raw form ``{"move_type", "player", "from_pos": [y, x],
    "to_pos": [y, x]}`` (note the order; on hex boards the cube y and x). Types
    starting with ``no_`` or ``skip`` (``NO_ACTION``, ``SKIP`` in the raw form) are
    passes: their destination is a placeholder and is ignored.

Samples (one per move: the position before it, and the move as the policy target)
    Planes, all binary, in this order (see :func:`plane_names`)::

        0                      on board
        per player j (j = 0 the side to move, then the following seats in turn),
        2 * HISTORY + 1 planes:
            to-1, from-1       destination and origin of its last move with a destination
            to-2, from-2       ... of the move before that
            visited            every cell it has moved to so far
        seat-0 .. seat-(P-1)   the side to move's seat (0-based), all on-board cells
        prev-<kind>            the kind of the previous move (start: none yet)
        continuing             the side to move also made the previous move (mid-turn)

    Policy: the move's destination cell (``row * width + col``), or ``height * width``
    for a pass or any move without a destination. Value: +1 if the side to move won,
    -1 if another player won, 0 without a winner (canonical ``winner`` null or absent,
    snake ``winner`` 0: a draw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from ringd.boards import BOARDS, MAX_PLAYERS, BoardShape, cell_from_raw
from ringd.train.encode import EncodeError, Geometry, Samples, UnsupportedBoard

HISTORY = 2  # last moves per player shown as to/from planes
KINDS = (
    "start",
    "placement",
    "movement",
    "capture",
    "line",
    "territory",
    "elimination",
    "pass",
    "other",
)
_KIND = {name: i for i, name in enumerate(KINDS)}
_PER_PLAYER = 2 * HISTORY + 1


def plane_count(players: int) -> int:
    return 1 + players * _PER_PLAYER + players + len(KINDS) + 1


def plane_names(players: int) -> list[str]:
    """The name of every plane, in order (for documentation, debugging and tests)."""
    names = ["on_board"]
    for j in range(players):
        for k in range(1, HISTORY + 1):
            names += [f"p{j}_to_{k}", f"p{j}_from_{k}"]
        names.append(f"p{j}_visited")
    names += [f"seat_{s}" for s in range(players)]
    names += [f"prev_{kind}" for kind in KINDS]
    names.append("continuing")
    assert len(names) == plane_count(players)
    return names


@dataclass(frozen=True)
class _Board:
    shape: BoardShape
    side: int  # the grid is side x side
    mask: npt.NDArray[np.bool_]  # (side * side,): cells on the board

    def index(self, x: int, y: int, z: int | None = None) -> int:
        """The grid index of square cell (x, y) or cube cell (x, y, z); EncodeError if off it."""
        if self.shape.kind == "square":
            if 0 <= x < self.side and 0 <= y < self.side:
                return y * self.side + x
        else:
            r = self.shape.size
            if z is not None and x + y + z != 0:
                raise EncodeError(f"cube cell ({x}, {y}, {z}) does not sum to 0")
            if abs(x) <= r and abs(y) <= r and abs(x + y) <= r:
                return (y + r) * self.side + (x + r)
        where = (x, y) if z is None else (x, y, z)
        raise EncodeError(f"cell {where} is off the {self.shape.name} board")


@cache
def _board(name: str) -> _Board:
    shape = BOARDS[name]
    side = shape.size if shape.kind == "square" else 2 * shape.size + 1
    mask = np.zeros(side * side, dtype=np.bool_)
    board = _Board(shape, side, mask)
    for cell in shape.cells():
        mask[board.index(*cell)] = True
    mask.setflags(write=False)
    return board


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(type_name: str) -> int:
    t = type_name.lower()
    if t.startswith(("no_", "skip")) or t == "pass":
        return _KIND["pass"]
    for needle, kind in (
        ("capture", "capture"),
        ("place", "placement"),
        ("line", "line"),
        ("territor", "territory"),
        ("elimin", "elimination"),
        ("move", "movement"),
    ):
        if needle in t:
            return _KIND[kind]
    return _KIND["other"]


def _cell(board: _Board, value: object, raw: bool) -> int:
    """Grid index of a move's position field; -1 if absent (null)."""
    if value is None:
        return -1
    if raw:
        # GPU selfplay lists are [y, x] (on hex boards the cube y and x).
        if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
            raise EncodeError(f"raw position must be [y, x], got {value!r}")
        return board.index(*cell_from_raw(board.shape, value))
    if not isinstance(value, Mapping):
        raise EncodeError(f"position must be an object, got {value!r}")
    x, y, z = value.get("x"), value.get("y"), value.get("z")
    if not (isinstance(x, int) and isinstance(y, int) and (z is None or isinstance(z, int))):
        raise EncodeError(f"position needs integer x and y, got {dict(value)!r}")
    if isinstance(x, bool) or isinstance(y, bool) or isinstance(z, bool):
        raise EncodeError(f"position needs integer x and y, got {dict(value)!r}")
    return board.index(x, y, z)


@dataclass(frozen=True)
class _Moves:
    player: npt.NDArray[np.int64]  # 0-based seat of the mover
    to: npt.NDArray[np.int64]  # grid index of the destination, -1 for none (a pass)
    frm: npt.NDArray[np.int64]  # grid index of the origin, -1 for none
    kind: npt.NDArray[np.int64]  # index into KINDS


def _parse_moves(moves: Sequence[object], board: _Board, players: int) -> _Moves:
    n = len(moves)
    player = np.empty(n, np.int64)
    to = np.full(n, -1, np.int64)
    frm = np.full(n, -1, np.int64)
    kind = np.empty(n, np.int64)
    for i, move in enumerate(moves):
        if not isinstance(move, Mapping):
            raise EncodeError(f"move {i} is not an object")
        raw = "move_type" in move or "to_pos" in move
        type_name = move.get("move_type" if raw else "type")
        if not isinstance(type_name, str):
            raise EncodeError(f"move {i} has no type")
        p = move.get("player")
        if not (isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= players):
            raise EncodeError(f"move {i}: player {p!r} is not in 1..{players}")
        player[i] = p - 1
        kind[i] = _kind(type_name)
        if kind[i] == _KIND["pass"]:
            continue  # the destination of a pass is a placeholder, not a cell
        to[i] = _cell(board, move.get("to_pos" if raw else "to"), raw)
        frm[i] = _cell(board, move.get("from_pos" if raw else "from"), raw)
    return _Moves(player, to, frm, kind)


def _winner(record: Mapping[str, Any], players: int) -> int | None:
    """The winner's 0-based seat, or None (no winner; the snake dialect writes 0 for a draw)."""
    winner = record.get("winner")
    if winner is None or (winner == 0 and not isinstance(winner, bool)):
        return None
    if not (isinstance(winner, int) and not isinstance(winner, bool) and 1 <= winner <= players):
        raise EncodeError(f"winner {winner!r} is not a player of {players}")
    return winner - 1


def _field(record: Mapping[str, Any], camel: str, snake: str) -> object:
    return record[camel] if camel in record else record.get(snake)


class GridEncoder:
    """RingRift records (camelCase or snake_case) -> grid samples; see the module docs."""

    name = "grid"
    version = 1

    def geometry(self, board: str, players: int) -> Geometry:
        if board not in BOARDS:
            raise UnsupportedBoard(
                f"the grid encoder knows the boards {', '.join(BOARDS)}, not {board!r}"
            )
        if not 1 <= players <= MAX_PLAYERS:
            raise UnsupportedBoard(f"players must be 1..{MAX_PLAYERS}, got {players}")
        side = _board(board).side
        return Geometry(board, players, plane_count(players), side, side)

    def encode(self, record: Mapping[str, Any], geometry: Geometry) -> Samples:
        board_name = _field(record, "boardType", "board_type")
        players = _field(record, "numPlayers", "num_players")
        if board_name != geometry.board or players != geometry.players:
            raise EncodeError(
                f"record is {board_name}/{players} players, the job is "
                f"{geometry.board}/{geometry.players}"
            )
        moves = record.get("moves")
        if not isinstance(moves, list):
            raise EncodeError("record has no list of moves")
        board = _board(geometry.board)
        parsed = _parse_moves(moves, board, geometry.players)
        winner = _winner(record, geometry.players)
        return _samples(parsed, winner, board, geometry)


def _samples(moves: _Moves, winner: int | None, board: _Board, geometry: Geometry) -> Samples:
    # Whole-game array arithmetic: the per-move Python work is done by _parse_moves.
    n, players, cells = len(moves.player), geometry.players, geometry.cells
    t = np.arange(n)
    has_cell = moves.to >= 0
    by_seat = np.zeros((n, players, _PER_PLAYER, cells), dtype=np.bool_)
    for p in range(players):
        made = np.flatnonzero((moves.player == p) & has_cell)  # p's moves with a destination
        if made.size == 0:
            continue
        before = np.searchsorted(made, t, side="left")  # how many of them precede position t
        for k in range(1, HISTORY + 1):
            at = before >= k
            j = made[before[at] - k]  # p's k-th last move before each position in `at`
            by_seat[t[at], p, 2 * (k - 1), moves.to[j]] = True
            came = moves.frm[j] >= 0
            by_seat[t[at][came], p, 2 * (k - 1) + 1, moves.frm[j[came]]] = True
        arrivals = np.zeros((n + 1, cells), dtype=np.int32)
        arrivals[made + 1, moves.to[made]] = 1  # row t + 1: the move at t has been made
        by_seat[:, p, _PER_PLAYER - 1] = np.cumsum(arrivals, axis=0)[:n] > 0

    side = moves.player
    order = (side[:, None] + np.arange(players)) % players  # seats from the side to move on
    planes = np.zeros((n, geometry.planes, cells), dtype=np.bool_)
    planes[:, 0] = board.mask
    planes[:, 1 : 1 + players * _PER_PLAYER] = by_seat[t[:, None], order].reshape(n, -1, cells)
    base = 1 + players * _PER_PLAYER
    planes[t, base + side] = board.mask
    previous = np.concatenate(([_KIND["start"]], moves.kind[:-1])).astype(np.int64)
    planes[t, base + players + previous] = board.mask
    continuing = np.zeros(n, dtype=np.bool_)
    continuing[1:] = moves.player[1:] == moves.player[:-1]
    planes[t[continuing], base + players + len(KINDS)] = board.mask

    policy = np.where(has_cell, moves.to, geometry.pass_index).astype(np.int32)
    if winner is None:
        value = np.zeros(n, dtype=np.float32)
    else:
        value = np.where(side == winner, 1.0, -1.0).astype(np.float32)
    packed = np.packbits(planes.reshape(n, -1), axis=1)
    return Samples(packed, policy, value)
