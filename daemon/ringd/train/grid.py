"""The built-in ``grid`` encoder: RingRift records of every writer onto a square grid.

Boards
    The grid is RingRift's canvas of the board (:mod:`ringd.boards`): square boards by
    ``(x, y)``: row ``y``, column ``x``; hex boards by cube coordinates ``(x, y, z)``
    (``x + y + z = 0``, radius r: hex8 4, hexagonal 12) on a ``(2r+1) x (2r+1)`` grid:
    row ``y + r``, column ``x + r``. Grid cells off the hexagon are zero in every
    plane, and the on-board mask plane (plane 0) tells the network where the board is.

Moves (every format RingRift writes; see shared/fixtures/ringrift-real)
    The type is ``type`` (canonical ``place_ring``) or ``move_type`` (raw ``PLACEMENT``);
    the destination ``to`` or ``to_pos``, the origin ``from`` or ``from_pos``. A
    position is a cell object ``{x, y[, z]}`` in the board's coordinates (hex: ``z``
    may be left out or null, as quality-tier writers do), or a list ``[row, col]`` on
    the canvas (GPU selfplay's ``--no-canonical-export``: hex ``x = col - r``,
    ``y = row - r``). Types starting with ``no_`` or ``skip`` (``NO_ACTION``, ``SKIP``)
    are passes, and ``swap_sides`` has no destination either: their ``to`` is a
    placeholder and is ignored. A field the encoder reads but cannot understand is an
    :class:`EncodeError` naming it (``moves[3].from_pos: ...``), never an empty plane.

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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from ringd.boards import (
    BOARDS,
    MAX_PLAYERS,
    BoardShape,
    Cell,
    canvas_from_cell,
    cell_from_canvas,
)
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
    side: int  # the grid is side x side: RingRift's canvas of the board
    mask: npt.NDArray[np.bool_]  # (side * side,): cells on the board
    # (x, y) of every cell -> its grid index (hex: the cube x and y; z = -x - y)
    xy: Mapping[tuple[int, int], int]

    def index(self, cell: Cell) -> int | None:
        """The grid index of ``cell`` (``(x, y)`` or cube ``(x, y, z)``); None if off the board."""
        if not self.shape.contains(cell):
            return None
        return self.xy[(cell[0], cell[1])]


@cache
def _board(name: str) -> _Board:
    shape = BOARDS[name]
    side = shape.board_size
    xy: dict[tuple[int, int], int] = {}
    for cell in shape.cells():
        row, col = canvas_from_cell(shape, cell)  # the grid is RingRift's canvas
        xy[(cell[0], cell[1])] = row * side + col
    mask = np.zeros(side * side, dtype=np.bool_)
    mask[list(xy.values())] = True
    mask.setflags(write=False)
    return _Board(shape, side, mask, xy)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@lru_cache(maxsize=1024)
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


# Moves whose destination is a placeholder, not a cell: passes (``no_*``, ``skip*``) and
# the pie rule (RingRift writes ``swap_sides`` with ``to: {x: 0, y: 0}``).
_PLACEHOLDER_TYPES = frozenset({"swap_sides", "SWAP_SIDES"})
DESTINATION_FIELDS = ("to", "to_pos")
ORIGIN_FIELDS = ("from", "from_pos")
_READ_FIELDS = frozenset(DESTINATION_FIELDS + ORIGIN_FIELDS)
# Other names that look like a move's position (``toPos``, ``from_cell``, ...): an error
# rather than a position silently left out of the planes.
_POSITION_LIKE = re.compile(r"^(?:to|from)(?:[_A-Z0-9].*)?$")


def _show(value: object, limit: int = 60) -> str:
    text = repr(dict(value) if isinstance(value, Mapping) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(board: _Board, value: object, i: int, name: str) -> int:
    """Grid index of the position ``value`` of field ``name`` of move ``i``; -1 for null.

    A cell object ``{x, y[, z]}`` is in the board's own coordinates (hex: cube, ``z``
    may be left out or null); a list ``[row, col]`` is a position on RingRift's canvas.
    """
    if value is None:
        return -1
    if type(value) is dict:  # the common case, checked quickly; anything odd: _cell_checked
        x, y, n = value.get("x"), value.get("y"), len(value)
        if type(x) is int and type(y) is int and (n == 2 or (n == 3 and "z" in value)):
            z = value.get("z")
            if z is None or (type(z) is int and board.shape.kind == "hex" and x + y + z == 0):
                index = board.xy.get((x, y))
                if index is not None:
                    return index
    return _cell_checked(board, value, f"moves[{i}].{name}")


def _cell_checked(board: _Board, value: object, field: str) -> int:
    """:func:`_cell` the long way: the grid index, or EncodeError saying what is wrong."""
    shape = board.shape
    if isinstance(value, list):
        if len(value) != 2 or not (_is_int(value[0]) and _is_int(value[1])):
            raise EncodeError(
                f"{field}: a canvas position is [row, col], two integers; got {_show(value)}"
            )
        at = cell_from_canvas(shape, value[0], value[1])
        index = board.index(at)
        if index is None:
            raise EncodeError(
                f"{field}: canvas [row, col] {value} is cell {at}, off the {shape.name} board"
            )
        return index
    if not isinstance(value, Mapping):
        raise EncodeError(
            f"{field}: expected a cell {{x, y[, z]}} or a canvas [row, col], got {_show(value)}"
        )
    extra = [k for k in value if k not in ("x", "y", "z")]
    if extra:
        raise EncodeError(f"{field}.{extra[0]}: a cell has only x, y and z; got {_show(value)}")
    x, y, z = value.get("x"), value.get("y"), value.get("z")
    for axis, v in (("x", x), ("y", y)):
        if not _is_int(v):
            raise EncodeError(f"{field}.{axis}: expected an integer, got {_show(v)}")
    assert isinstance(x, int) and isinstance(y, int)
    if z is not None and not _is_int(z):
        raise EncodeError(f"{field}.z: expected an integer or null, got {_show(z)}")
    if shape.kind == "square":
        if z is not None:
            raise EncodeError(f"{field}.z: a {shape.name} cell has no z, got {z}")
        cell: Cell = (x, y)
    else:
        if z is None:
            z = -x - y  # quality-tier writers leave z out
        elif x + y + z != 0:
            raise EncodeError(f"{field}: cube cell ({x}, {y}, {z}) does not sum to 0")
        cell = (x, y, z)
    index = board.index(cell)
    if index is None:
        raise EncodeError(f"{field}: cell {cell} is off the {shape.name} board")
    return index


def _position(board: _Board, move: Mapping[str, object], i: int, names: tuple[str, str]) -> int:
    """Grid index of the move's position under one of ``names``; -1 for null, -2 if absent.

    When a move has both names (``to`` and ``to_pos``), they must agree.
    """
    first, second = names
    if first in move:
        index = _cell(board, move[first], i, first)
        if second in move and _cell(board, move[second], i, second) != index:
            raise EncodeError(
                f"moves[{i}].{second}: {_show(move[second])} disagrees with "
                f"moves[{i}].{first} {_show(move[first])}"
            )
        return index
    if second in move:
        return _cell(board, move[second], i, second)
    return -2


def _move_type(move: Mapping[str, object], i: int) -> str:
    """The move's type: canonical ``type`` or raw ``move_type``."""
    found: str | None = None
    for name in ("type", "move_type"):
        if name in move:
            value = move[name]
            if not isinstance(value, str) or not value:
                raise EncodeError(f"moves[{i}].{name}: expected a move type, got {_show(value)}")
            if found is not None and _kind(found) != _kind(value):
                raise EncodeError(f"moves[{i}].move_type: {value!r} disagrees with type {found!r}")
            found = found or value
    if found is None:
        raise EncodeError(f"moves[{i}].type: missing (a move needs type or move_type)")
    return found


def _check_position_fields(move: Mapping[str, object], i: int) -> None:
    for key in move:
        if key not in _READ_FIELDS and _POSITION_LIKE.match(key):
            raise EncodeError(
                f"moves[{i}].{key}: a position field the grid encoder does not read "
                "(it reads to / to_pos and from / from_pos)"
            )


@dataclass(frozen=True)
class _Moves:
    player: npt.NDArray[np.int64]  # 0-based seat of the mover
    to: npt.NDArray[np.int64]  # grid index of the destination, -1 for none (a pass)
    frm: npt.NDArray[np.int64]  # grid index of the origin, -1 for none
    kind: npt.NDArray[np.int64]  # index into KINDS


def _parse_moves(moves: Sequence[object], board: _Board, players: int) -> _Moves:
    """Every move's mover, destination, origin and kind; EncodeError naming the field."""
    n = len(moves)
    player = [0] * n
    to = [-1] * n
    frm = [-1] * n
    kind = [0] * n
    checked: set[frozenset[str]] = set()  # key sets already checked for unread positions
    pass_kind = _KIND["pass"]
    for i, move in enumerate(moves):
        if not isinstance(move, Mapping):
            raise EncodeError(f"moves[{i}]: expected a move object, got {_show(move)}")
        type_name = move.get("type")
        if type(type_name) is not str or not type_name or "move_type" in move:
            type_name = _move_type(move, i)
        p = move.get("player")
        if type(p) is not int or not 1 <= p <= players:
            what = "missing, not" if p is None else f"{_show(p)} is not"
            raise EncodeError(f"moves[{i}].player: {what} a player of 1..{players}")
        player[i] = p - 1
        k = kind[i] = _kind(type_name)
        if k == pass_kind or type_name in _PLACEHOLDER_TYPES:
            continue  # the destination is a placeholder, not a cell
        keys = frozenset(move)
        if keys not in checked:
            _check_position_fields(move, i)
            checked.add(keys)
        dest = _position(board, move, i, DESTINATION_FIELDS)
        if dest == -2:
            raise EncodeError(
                f"moves[{i}].to: missing (a {type_name} move needs to or to_pos; null if none)"
            )
        to[i] = dest
        origin = _position(board, move, i, ORIGIN_FIELDS)
        frm[i] = origin if origin >= 0 else -1
    return _Moves(
        np.array(player, np.int64),
        np.array(to, np.int64),
        np.array(frm, np.int64),
        np.array(kind, np.int64),
    )


def _winner(record: Mapping[str, Any], players: int) -> int | None:
    """The winner's 0-based seat, or None (no winner; the snake dialect writes 0 for a draw)."""
    winner = record.get("winner")
    if winner is None or (winner == 0 and not isinstance(winner, bool)):
        return None
    if not (isinstance(winner, int) and not isinstance(winner, bool) and 1 <= winner <= players):
        raise EncodeError(f"winner: {_show(winner)} is not a player of 1..{players}")
    return winner - 1


def _field(record: Mapping[str, Any], camel: str, snake: str) -> tuple[str, object]:
    """The record's field by its camelCase or snake_case name: (name, value)."""
    return (camel, record[camel]) if camel in record else (snake, record.get(snake))


class GridEncoder:
    """RingRift records (camelCase or snake_case) -> grid samples; see the module docs."""

    name = "grid"
    # 2: raw canvas [row, col] positions, soak from_pos, the pie rule's placeholder and
    # a missing destination (an error now) changed the samples of some games.
    version = 2

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
        """The game's samples; EncodeError naming the field (``moves[3].from_pos: ...``)."""
        board_field, board_name = _field(record, "boardType", "board_type")
        # Another board's own name is an error; any other name is an alias (``hex``,
        # ``sq8``, a site's own) that the daemon resolved when it filed the game here.
        if board_name != geometry.board and (
            not isinstance(board_name, str) or board_name in BOARDS
        ):
            raise EncodeError(
                f"{board_field}: the record is {_show(board_name)}, the job {geometry.board}"
            )
        players_field, players = _field(record, "numPlayers", "num_players")
        if players != geometry.players:
            raise EncodeError(
                f"{players_field}: the record has {_show(players)} players, "
                f"the job {geometry.players}"
            )
        moves = record.get("moves")
        if not isinstance(moves, list) or not moves:
            raise EncodeError(f"moves: expected a list of moves, got {_show(moves)}")
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
