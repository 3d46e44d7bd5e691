"""RingRift's boards: names, geometry, aliases and the `{board}_{n}p` rule.

The one source for records (config keys), settings (config names, aliases),
the sample encoder (board geometry) and the simulator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

Cell = tuple[int, ...]

MAX_PLAYERS = 8
PLAYER_COUNTS = (2, 3, 4)  # what RingRift plays; records may say 1 to MAX_PLAYERS
BOARD_NAME_RULE = "[a-z][a-z0-9_]*, at most 32 characters"
BOARD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The board part may itself hold underscores and digits (`hex8`, `square_19`).
CONFIG_NAME = re.compile(rf"^(?P<board>[a-z][a-z0-9_]{{0,31}})_(?P<players>[1-{MAX_PLAYERS}])p$")


@dataclass(frozen=True)
class BoardShape:
    """A RingRift board: `size` is the side of a square board or the radius of a hex board."""

    name: str
    kind: Literal["square", "hex"]
    size: int

    def cells(self) -> list[Cell]:
        """Every cell: `(x, y)` on square boards, cube `(x, y, z)` with x + y + z == 0 on hex."""
        return list(board_cells(self))

    def contains(self, cell: Sequence[int]) -> bool:
        """Whether `cell` (in this board's coordinate form) lies on the board."""
        if self.kind == "square":
            return len(cell) == 2 and all(0 <= c < self.size for c in cell)
        return len(cell) == 3 and sum(cell) == 0 and all(abs(c) <= self.size for c in cell)

    @property
    def board_size(self) -> int:
        """The side of the square canvas RingRift's GPU kernels use (hex: 2 * radius + 1)."""
        return self.size if self.kind == "square" else 2 * self.size + 1


BOARDS: dict[str, BoardShape] = {
    "square8": BoardShape("square8", "square", 8),
    "square19": BoardShape("square19", "square", 19),
    "hex8": BoardShape("hex8", "hex", 4),
    "hexagonal": BoardShape("hexagonal", "hex", 12),
}

# Names some RingRift writers put in records (the name they were given on the
# command line); RingRift itself treats them as these boards.
DEFAULT_ALIASES: Mapping[str, str] = {
    "hex": "hexagonal",
    "full_hex": "hexagonal",
    "hex24": "hexagonal",
    "sq8": "square8",
    "sq19": "square19",
}

CONFIGS: list[str] = [f"{board}_{n}p" for board in BOARDS for n in PLAYER_COUNTS]


def config_name(board: str, players: int) -> str:
    """`("square8", 2)` -> `square8_2p`."""
    return f"{board}_{players}p"


def split_config_name(name: str) -> tuple[str, int] | None:
    """`square8_2p` -> ("square8", 2); None when the name is not `{board}_{n}p`."""
    m = CONFIG_NAME.match(name)
    return (m["board"], int(m["players"])) if m else None


@cache
def board_cells(board: BoardShape) -> tuple[Cell, ...]:
    """Every cell of `board` in a fixed order (rows of x on square boards)."""
    if board.kind == "square":
        return tuple((x, y) for y in range(board.size) for x in range(board.size))
    r = board.size
    return tuple(
        (x, y, -x - y) for x in range(-r, r + 1) for y in range(max(-r, -x - r), min(r, -x + r) + 1)
    )


# RingRift's GPU selfplay keeps a board in a square tensor, its canvas (`board_size` on
# a side: the side of a square board, 2 * radius + 1 for a hex board), and its raw
# moves (`--no-canonical-export`) give positions as canvas `[row, col]`. Square boards:
# x = col, y = row. Hex boards of radius r: x = col - r, y = row - r, z = -x - y (the
# canvas cells outside the hexagon are no cell). Checked against RingRift's own raw and
# canonical writes of the same games (shared/fixtures/ringrift-real, gpu_hex8_2p*).


def cell_from_canvas(board: BoardShape, row: int, col: int) -> Cell:
    """The cell at canvas `[row, col]` (see above); it may lie off the board: check with
    `board.contains`."""
    if board.kind == "square":
        return (col, row)
    x, y = col - board.size, row - board.size
    return (x, y, -x - y)


def canvas_from_cell(board: BoardShape, cell: Sequence[int]) -> tuple[int, int]:
    """The canvas `[row, col]` of `cell` (`(x, y)` square, cube `(x, y, z)` hex)."""
    if board.kind == "square":
        return (cell[1], cell[0])
    return (cell[1] + board.size, cell[0] + board.size)
