"""The built-in grid encoder on real RingRift records (the golden fixtures) and on
simulator records of both dialects."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ringd.boards import BOARDS, cell_from_canvas
from ringd.sim import is_pass_move, make_record
from ringd.train.encode import EncodeError, Geometry, UnsupportedBoard, load_encoder
from ringd.train.grid import GridEncoder, plane_count, plane_names

ENCODER = GridEncoder()


def unpack(planes: npt.NDArray[np.uint8], geometry: Geometry) -> npt.NDArray[np.uint8]:
    bits = np.unpackbits(planes, axis=1)[:, : geometry.planes * geometry.cells]
    return bits.reshape(len(planes), geometry.planes, geometry.height, geometry.width)


def plane(name: str, players: int) -> int:
    return plane_names(players).index(name)


def geometry_of(record: dict[str, Any]) -> Geometry:
    board = record.get("boardType", record.get("board_type"))
    players = record.get("numPlayers", record.get("num_players"))
    return ENCODER.geometry(board, players)


def snake_record(config: str, *, raw: bool, seed: int = 0) -> dict[str, Any]:
    """A simulator snake_case record whose moves are raw canvas [row, col] lists (or canonical)."""
    rng = random.Random(seed)
    for i in range(200):
        record = make_record(rng, config, "snake", f"g{i}")
        if ("move_type" in record["moves"][0]) == raw:  # type: ignore[index]
            return record
    raise AssertionError("the simulator made no record of that move style")


def test_golden_shapes_and_targets(golden: list[dict[str, Any]]) -> None:
    for entry in golden:
        record = entry["record"]
        geometry = geometry_of(record)
        samples = ENCODER.encode(record, geometry)
        moves = record["moves"]
        n = len(moves)
        side = 8 if record["boardType"] == "square8" else 9  # hex8: radius 4 on a 9x9 grid
        assert (geometry.height, geometry.width, geometry.planes) == (side, side, plane_count(2))
        assert samples.planes.shape == (n, (geometry.planes * side * side + 7) // 8), entry["name"]
        assert samples.policy.shape == samples.value.shape == (n,)
        samples.check(geometry)
        for move, target in zip(moves, samples.policy.tolist(), strict=True):
            if is_pass_move(move):
                assert target == geometry.pass_index, (entry["name"], move)
            else:
                to = move["to"]
                r = 0 if side == 8 else 4
                assert target == (to["y"] + r) * side + (to["x"] + r), (entry["name"], move)


def test_golden_pass_moves_use_the_pass_index(golden: list[dict[str, Any]]) -> None:
    record = next(e["record"] for e in golden if e["name"].startswith("fullgame_hex8"))
    geometry = geometry_of(record)
    samples = ENCODER.encode(record, geometry)
    kinds = {
        m["type"]
        for m, t in zip(record["moves"], samples.policy, strict=True)
        if t == geometry.pass_index
    }
    assert kinds == {
        t for t in (m["type"] for m in record["moves"]) if t.startswith(("no_", "skip_"))
    }
    assert {"no_line_action", "skip_capture", "no_territory_action"} <= kinds
    # A pass's placeholder {"x": 0, "y": 0, "z": null} is not the cell (0, 0, 0).
    centre = (0 + 4) * 9 + (0 + 4)
    assert not any(
        t == centre and m["type"].startswith("no_")
        for m, t in zip(record["moves"], samples.policy, strict=True)
    )


def test_golden_values(golden: list[dict[str, Any]]) -> None:
    for entry in golden:
        record = entry["record"]
        samples = ENCODER.encode(record, geometry_of(record))
        if record.get("winner") is None:  # null or absent: no winner
            assert not samples.value.any(), entry["name"]
        else:
            movers = np.array([m["player"] for m in record["moves"]])
            expected = np.where(movers == record["winner"], 1.0, -1.0)
            np.testing.assert_array_equal(samples.value, expected)
            assert set(samples.value.tolist()) == {1.0, -1.0}


def test_golden_history_planes(golden: list[dict[str, Any]]) -> None:
    """Each position shows the side to move's last destination/origin and where it went."""
    record = next(e["record"] for e in golden if e["name"] == "captures_square8_2p_272ed96f.json")
    geometry = geometry_of(record)
    planes = unpack(ENCODER.encode(record, geometry).planes, geometry)
    moves = record["moves"]
    for t, move in enumerate(moves):
        me = move["player"]
        mine = [m for m in moves[:t] if m["player"] == me and not is_pass_move(m)]
        to_1 = planes[t, plane("p0_to_1", 2)]
        from_1 = planes[t, plane("p0_from_1", 2)]
        visited = planes[t, plane("p0_visited", 2)]
        if mine:
            last = mine[-1]
            assert to_1.sum() == 1 and to_1[last["to"]["y"], last["to"]["x"]] == 1
            if "from" in last:
                assert from_1.sum() == 1 and from_1[last["from"]["y"], last["from"]["x"]] == 1
            else:
                assert from_1.sum() == 0
        else:
            assert to_1.sum() == 0 and from_1.sum() == 0
        assert {(int(y), int(x)) for y, x in zip(*np.nonzero(visited), strict=True)} == {
            (m["to"]["y"], m["to"]["x"]) for m in mine
        }
        # Side to move: its seat plane is on, the other seat's is off.
        assert planes[t, plane(f"seat_{me - 1}", 2)].all()
        assert not planes[t, plane(f"seat_{2 - me}", 2)].any()
        prev_pass = t > 0 and is_pass_move(moves[t - 1])
        assert planes[t, plane("prev_pass", 2)].all() == prev_pass


def test_hex_mapping_every_cell_distinct_and_inside_the_mask() -> None:
    for name, cells in (("hex8", 61), ("hexagonal", 469)):
        board = BOARDS[name]
        geometry = ENCODER.geometry(name, 2)
        assert geometry.height == geometry.width == 2 * board.size + 1
        indices = []
        for cell in board.cells():
            x, y, z = cell
            record = {
                "boardType": name,
                "numPlayers": 2,
                "moves": [{"type": "place_ring", "player": 1, "to": {"x": x, "y": y, "z": z}}],
            }
            indices.append(int(ENCODER.encode(record, geometry).policy[0]))
        assert len(indices) == len(set(indices)) == cells
        mask_record = {
            "boardType": name,
            "numPlayers": 2,
            "moves": [{"type": "no_line_action", "player": 1}],
        }
        mask = unpack(ENCODER.encode(mask_record, geometry).planes, geometry)[0, 0].reshape(-1)
        assert mask.sum() == cells
        assert all(mask[i] == 1 for i in indices)


def test_hex_cells_off_the_board_are_rejected() -> None:
    geometry = ENCODER.geometry("hex8", 2)
    for bad in ({"x": 4, "y": 1, "z": -5}, {"x": 3, "y": 3}, {"x": 1, "y": 1, "z": 1}):
        record = {
            "boardType": "hex8",
            "numPlayers": 2,
            "moves": [{"type": "move_stack", "player": 1, "to": bad}],
        }
        with pytest.raises(EncodeError):
            ENCODER.encode(record, geometry)


@pytest.mark.parametrize("config", ["square8_2p", "square19_3p", "hex8_2p", "hexagonal_4p"])
def test_snake_raw_moves_are_canvas_row_col(config: str) -> None:
    """Raw positions are [row, col] on RingRift's canvas, which is the grid itself."""
    record = snake_record(config, raw=True)
    geometry = geometry_of(record)
    board = BOARDS[geometry.board]
    samples = ENCODER.encode(record, geometry)
    asymmetric = 0
    for move, target in zip(record["moves"], samples.policy.tolist(), strict=True):
        if is_pass_move(move):
            assert target == geometry.pass_index
            continue
        row, col = move["to_pos"]
        asymmetric += row != col
        assert board.contains(cell_from_canvas(board, row, col))
        assert target == row * geometry.width + col
    assert asymmetric > 0  # the test would notice [col, row] read as [row, col]


def test_snake_and_camel_forms_of_a_game_encode_alike() -> None:
    """A raw [row, col] record and the same game written canonically give identical samples."""
    for config in ("square8_2p", "hex8_3p"):
        raw = snake_record(config, raw=True, seed=3)
        board = BOARDS[raw["board_type"]]
        canonical = copy.deepcopy(raw)
        canonical["moves"] = []
        for m in raw["moves"]:
            kind = "no_line_action" if is_pass_move(m) else m["move_type"].lower()
            move: dict[str, Any] = {"type": kind, "player": m["player"]}
            for src, dst in (("to_pos", "to"), ("from_pos", "from")):
                if m[src] is not None and not is_pass_move(m):
                    cell = cell_from_canvas(board, *m[src])
                    move[dst] = dict(zip("xyz", cell, strict=False))
            canonical["moves"].append(move)
        geometry = geometry_of(raw)
        a, b = ENCODER.encode(raw, geometry), ENCODER.encode(canonical, geometry)
        np.testing.assert_array_equal(a.policy, b.policy)
        np.testing.assert_array_equal(a.value, b.value)
        np.testing.assert_array_equal(a.planes, b.planes)


def test_snake_winner_zero_is_a_draw() -> None:
    record = snake_record("square8_2p", raw=True)
    record["winner"] = 0
    assert not ENCODER.encode(record, geometry_of(record)).value.any()
    record["winner"] = 2
    values = ENCODER.encode(record, geometry_of(record)).value
    movers = np.array([m["player"] for m in record["moves"]])
    np.testing.assert_array_equal(values, np.where(movers == 2, 1.0, -1.0))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(winner=3),
        lambda r: r.update(moves="nope"),
        lambda r: r["moves"][0].update(player=5),
        lambda r: r["moves"][0].update(to={"x": 8, "y": 0}),
        lambda r: r.update(numPlayers=3),
    ],
    ids=["winner", "moves", "player", "off-board", "players"],
)
def test_bad_records_are_encode_errors(change: Any) -> None:
    record: dict[str, Any] = {
        "boardType": "square8",
        "numPlayers": 2,
        "winner": 1,
        "moves": [{"type": "place_ring", "player": 1, "to": {"x": 1, "y": 2}}],
    }
    geometry = geometry_of(record)
    ENCODER.encode(record, geometry)  # valid as it stands
    change(record)
    with pytest.raises(EncodeError):
        ENCODER.encode(record, geometry)


def test_geometry_and_registry() -> None:
    assert load_encoder("grid").geometry("square19", 4) == Geometry(
        "square19", 4, plane_count(4), 19, 19
    )
    with pytest.raises(UnsupportedBoard):
        ENCODER.geometry("octagon", 2)
    assert len(plane_names(3)) == plane_count(3)
