"""A plausible RingRift move sequence: the game behind every simulated record."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ringd.boards import BoardShape, Cell, board_cells

DIRECTIONS: dict[str, tuple[Cell, ...]] = {
    "square": ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)),
    "hex": ((1, -1, 0), (1, 0, -1), (0, 1, -1), (-1, 1, 0), (-1, 0, 1), (0, -1, 1)),
}


@dataclass(frozen=True)
class BoardRules:
    rings: int  # rings per player
    reach: int  # longest plain move the simulator tries
    line: int  # markers in a scoring line
    moves: tuple[int, int, int]  # triangular(low, high, mode) of a game's length


# Lengths follow what RingRift selfplay produces; they set the serialized sizes
# (about 10-100 KB a line in the camel dialect), which the ingest benchmarks rely on.
RULES: dict[str, BoardRules] = {
    "square8": BoardRules(rings=18, reach=4, line=4, moves=(40, 120, 70)),
    "square19": BoardRules(rings=36, reach=9, line=4, moves=(150, 400, 240)),
    "hex8": BoardRules(rings=18, reach=4, line=4, moves=(60, 150, 100)),
    "hexagonal": BoardRules(rings=48, reach=8, line=4, moves=(150, 400, 260)),
}


@dataclass(slots=True)
class Move:
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


class Game:
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
        self.rules = RULES[board.name]
        self.cells = board_cells(board)
        self.cell_set = frozenset(self.cells)
        self.dirs = DIRECTIONS[board.kind]
        self.stacks: dict[Cell, int] = {}
        self.in_hand = [0] + [self.rules.rings] * players
        self.eliminated = [0] * (players + 1)
        self.territory = [0] * (players + 1)
        self.moves: list[Move] = []

    def play(self, n_moves: int) -> list[Move]:
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
            emit(Move("place_ring", p, cell, placement_count=count, placed_on_stack=on_stack))
            origin = cell
        else:
            emit(Move("skip_placement" if self.in_hand[p] else "no_placement_action", p, None))
            origin = rng.choice(own) if own else None
            if own and rng.random() < 0.1:
                # A blocked player must eliminate from one of its stacks.
                emit(Move("no_movement_action", p, None))
                emit(
                    Move("forced_elimination", p, origin, placement_count=0, placed_on_stack=False)
                )
                self.eliminated[p] += 1
                origin = None
        landing = self._movement(p, origin) if origin is not None else None
        if origin is None and (not self.moves or self.moves[-1].type != "forced_elimination"):
            emit(Move("no_movement_action", p, None))
        self._line_phase(p, landing)
        if rng.random() < 0.03:
            region = tuple(rng.sample(self.cells, rng.randint(1, 4)))
            self.territory[p] += len(region)
            emit(Move("choose_territory_option", p, region[0], region=region))
        else:
            emit(Move("no_territory_action", p, None))

    def _movement(self, p: int, origin: Cell) -> Cell | None:
        rng, cell_set, emit = self.rng, self.cell_set, self.moves.append
        for _ in range(6):
            d = rng.choice(self.dirs)
            if rng.random() < 0.22:
                a, b = rng.randint(1, 3), rng.randint(1, 3)
                target, land = _step(origin, d, a), _step(origin, d, a + b)
                if target in cell_set and land in cell_set:
                    emit(Move("overtaking_capture", p, land, frm=origin, capture=target))
                    self._relocate(p, origin, land)
                    return self._capture_chain(p, land, target)
            else:
                dest = _step(origin, d, rng.randint(1, self.rules.reach))
                if dest in cell_set:
                    emit(Move("move_stack", p, dest, frm=origin))
                    self._relocate(p, origin, dest)
                    if rng.random() < 0.1:
                        emit(Move("skip_capture", p, None))
                    return dest
        emit(Move("no_movement_action", p, None))
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
            self.moves.append(Move("continue_capture_segment", p, land, frm=at, capture=target))
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
                emit(Move("choose_line_option", p, line[0], line=line, line_dir=d))
                self.territory[p] += len(line)
                self.eliminated[p] += 1
                emit(Move("eliminate_rings_from_stack", p, landing, eliminated=1))
                return
        emit(Move("no_line_action", p, None))
