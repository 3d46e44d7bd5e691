"""Every move format RingRift's own writers produce, through the grid encoder and the job.

The real corpus is ``../shared/fixtures/ringrift-real`` (179 records from RingRift's
selfplay scripts; its README says which script and flags wrote which folder). Formats:

- canonical moves ``{type, player, from, to}`` (cube ``{x, y, z}`` on hex boards; square
  cells ``{x, y}`` or ``{x, y, z: null}``), in camelCase records (``canonical/``,
  ``GameRecord``) and snake_case records (``gpu_*``: GPU selfplay's canonical export,
  passes without ``to``; ``gumbel/``);
- GPU selfplay raw moves (``--no-canonical-export``, ``gpu_*_raw``): ``{move_type,
  from_pos: [row, col], to_pos: [row, col]}`` on the board's canvas;
- the soak writer's snake_case moves (``soak/``): ``from_pos`` and ``to`` as ``{x, y, z}``
  objects (``z`` null on square boards and in pass placeholders), ``move_number``;
- quality-tier moves (``hybrid_*``): hex cells ``{x, y}`` without ``z``, passes with a
  placeholder ``to``.

For each, the same game written in its format and canonically encodes to identical
samples: from the fixtures' own pair (GPU hex8 raw and canonical of the same games)
and, for every record of the corpus, by rewriting it the way RingRift converts.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainkit import SpecFactory, run_in_process

from ringd.boards import (
    BOARDS,
    DEFAULT_ALIASES,
    BoardShape,
    canvas_from_cell,
    cell_from_canvas,
    config_name,
)
from ringd.records import game_key
from ringd.train.encode import EncodeError, Geometry, Samples
from ringd.train.grid import GridEncoder, plane_names
from ringd.train.protocol import ExitCode

REAL = Path(__file__).resolve().parents[2].parent / "shared/fixtures/ringrift-real"
SELFPLAY = REAL / "selfplay"
ENCODER = GridEncoder()
# The fixtures' pair: the same ten hex8 games, canonical export and raw (README).
PAIR = ("gpu_hex8_2p/games_hex8_2p_12122.jsonl", "gpu_hex8_2p_raw/games_hex8_2p_18967.jsonl")


@dataclass(frozen=True)
class Real:
    """One line of the real corpus."""

    file: str  # relative to selfplay/
    line: int  # 1-based
    offset: int  # of the line in its file
    text: bytes  # without its newline
    record: dict[str, Any]

    @property
    def board(self) -> str:
        name = str(self.record.get("boardType", self.record.get("board_type")))
        return DEFAULT_ALIASES.get(name, name)

    @property
    def players(self) -> int:
        return int(self.record.get("numPlayers", self.record.get("num_players", 0)))

    @property
    def config(self) -> str:
        return config_name(self.board, self.players)

    @property
    def geometry(self) -> Geometry:
        return ENCODER.geometry(self.board, self.players)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _read_corpus() -> list[Real]:
    out = []
    for path in sorted(SELFPLAY.rglob("*.jsonl")):
        offset = 0
        for n, text in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
            rel = str(path.relative_to(SELFPLAY))
            out.append(Real(rel, n, offset, text, json.loads(text)))
            offset += len(text) + 1
    return out


@pytest.fixture(scope="module")
def corpus() -> list[Real]:
    if not SELFPLAY.is_dir():
        pytest.skip(f"the real RingRift corpus is not at {REAL} (it lives in the shared/ folder)")
    return _read_corpus()


def in_folder(corpus: list[Real], prefix: str) -> list[Real]:
    found = [r for r in corpus if r.file.startswith(prefix)]
    assert found, f"no records under {prefix}"
    return found


def assert_same_samples(a: Samples, b: Samples, what: object) -> None:
    np.testing.assert_array_equal(a.policy, b.policy, err_msg=str(what))
    np.testing.assert_array_equal(a.value, b.value, err_msg=str(what))
    np.testing.assert_array_equal(a.planes, b.planes, err_msg=str(what))


# --- an independent reading of every format (what the encoder must agree with) -------


def is_placeholder(move: dict[str, Any]) -> bool:
    """Passes and the pie rule: their destination is a placeholder, not a cell."""
    t = str(move.get("type") or move.get("move_type")).lower()
    return t.startswith(("no_", "skip")) or t in ("pass", "swap_sides")


def reference_cell(board: BoardShape, value: Any) -> tuple[int, ...] | None:
    """A position of any RingRift format as a cell ``(x, y)`` or cube ``(x, y, z)``."""
    if value is None:
        return None
    if isinstance(value, list):  # GPU raw: canvas [row, col]
        row, col = value
        if board.kind == "square":
            return (col, row)
        r = board.size
        return (col - r, row - r, -(col - r) - (row - r))
    x, y = value["x"], value["y"]
    if board.kind == "square":
        return (x, y)
    return (x, y, -x - y if value.get("z") is None else value["z"])


def reference_moves(record: dict[str, Any], board: BoardShape) -> list[tuple[Any, Any, Any]]:
    """(mover, destination, origin) of each move; cells None where there is none."""
    out: list[tuple[Any, Any, Any]] = []
    for m in record["moves"]:
        if is_placeholder(m):
            out.append((m["player"], None, None))
            continue
        to = m["to"] if "to" in m else m["to_pos"]
        frm = m.get("from", m.get("from_pos"))
        out.append((m["player"], reference_cell(board, to), reference_cell(board, frm)))
    return out


def grid_index(board: BoardShape, cell: tuple[int, ...], side: int) -> int:
    row, col = canvas_from_cell(board, cell)
    return row * side + col


# --- the corpus as it is ----------------------------------------------------------------


def test_the_corpus_is_all_there(corpus: list[Real]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for r in corpus:
        counts[r.config] += 1
    assert dict(counts) == {
        "square8_2p": 74, "square8_3p": 10, "hex8_2p": 82,
        "hexagonal_2p": 6, "square19_3p": 3, "square19_4p": 4,
    }  # fmt: skip


def test_every_real_game_encodes_to_its_moves(corpus: list[Real]) -> None:
    """Each record of every writer: one sample per move, the destination as the policy
    target, and the side to move's last destination and origin in its history planes
    (the soak writer's ``from_pos`` included)."""
    with_origin: dict[str, int] = defaultdict(int)
    for r in corpus:
        geometry = r.geometry
        board = BOARDS[r.board]
        samples = ENCODER.encode(r.record, geometry)
        samples.check(geometry)
        moves = reference_moves(r.record, board)
        assert len(samples) == len(moves), r
        side = geometry.width
        expected = [
            geometry.pass_index if to is None else grid_index(board, to, side) for _, to, _ in moves
        ]
        assert samples.policy.tolist() == expected, r
        bits = np.unpackbits(samples.planes, axis=1)[:, : geometry.planes * geometry.cells]
        planes = bits.reshape(len(moves), geometry.planes, geometry.cells)
        names = plane_names(geometry.players)
        to_1, from_1 = names.index("p0_to_1"), names.index("p0_from_1")
        last: dict[int, tuple[Any, Any]] = {}
        for t, (player, to, frm) in enumerate(moves):
            mine = last.get(player)
            want_to = np.zeros(geometry.cells, np.uint8)
            want_from = np.zeros(geometry.cells, np.uint8)
            if mine is not None:
                want_to[grid_index(board, mine[0], side)] = 1
                if mine[1] is not None:
                    want_from[grid_index(board, mine[1], side)] = 1
                    with_origin[r.file.split("/")[0]] += 1
            assert (planes[t, to_1] == want_to).all(), (str(r), t)
            assert (planes[t, from_1] == want_from).all(), (str(r), t)
            if to is not None:
                last[player] = (to, frm)
    # Origins are read in every folder, the soak writer's from_pos among them.
    folders = {r.file.split("/")[0] for r in corpus if r.record["moves"]}
    assert set(with_origin) == folders


def test_the_fixture_pair_raw_and_canonical_encode_alike(corpus: list[Real]) -> None:
    """The same hex8 games from GPU selfplay, canonical export and --no-canonical-export:
    canvas [row, col] is cube x = col - 4, y = row - 4; the samples are identical."""
    canonical, raw = (in_folder(corpus, name) for name in PAIR)
    assert len(canonical) == len(raw) == 10
    for c, w in zip(canonical, raw, strict=True):
        assert len(c.record["moves"]) == len(w.record["moves"])
        board = BOARDS["hex8"]
        for cm, wm in zip(c.record["moves"], w.record["moves"], strict=True):
            for ck, wk in (
                ("to", "to_pos"),
                ("from", "from_pos"),
                ("captureTarget", "capture_target"),
            ):
                if cm.get(ck) is None:
                    assert wm.get(wk) is None
                else:
                    cell = cell_from_canvas(board, *wm[wk])
                    assert cell == (cm[ck]["x"], cm[ck]["y"], cm[ck]["z"]), (c, cm, wm)
        assert_same_samples(
            ENCODER.encode(c.record, c.geometry), ENCODER.encode(w.record, w.geometry), c
        )


# --- each format against the canonical form of the same game ------------------------------

# RingRift's GPU move types by canonical name (gpu_canonical_export.py, and the pair above).
RAW_TYPES = {"place_ring": "PLACEMENT", "move_stack": "MOVEMENT"}


def raw_type_table(corpus: list[Real]) -> dict[str, str]:
    """Canonical -> raw move type, as the fixture pair shows it."""
    canonical, raw = (in_folder(corpus, name) for name in PAIR)
    table: dict[str, str] = {}
    for c, w in zip(canonical, raw, strict=True):
        for cm, wm in zip(c.record["moves"], w.record["moves"], strict=True):
            table[cm["type"]] = wm["move_type"]
    return table


def to_gpu_raw(record: dict[str, Any], board: BoardShape) -> dict[str, Any]:
    """The record as GPU selfplay writes it with --no-canonical-export."""
    out = snake_record(record)
    moves = []
    for m in record["moves"]:
        raw: dict[str, Any] = {
            "move_type": RAW_TYPES.get(m["type"], m["type"].upper()),
            "player": m["player"],
        }
        for src, dst in (
            ("from", "from_pos"),
            ("to", "to_pos"),
            ("captureTarget", "capture_target"),
        ):
            cell = None if is_placeholder(m) else reference_cell(board, m.get(src))
            raw[dst] = None if cell is None else list(canvas_from_cell(board, cell))
        raw["phase"] = str(m.get("phase", "")).upper()
        raw["moveNumber"] = m.get("moveNumber")
        moves.append(raw)
    out["moves"] = moves
    return out


def to_soak(record: dict[str, Any], board: BoardShape) -> dict[str, Any]:
    """The record as run_self_play_soak.py writes it: snake_case moves, cells {x, y, z}."""

    def obj(cell: tuple[int, ...] | None) -> dict[str, Any] | None:
        if cell is None:
            return None
        return {"x": cell[0], "y": cell[1], "z": cell[2] if len(cell) == 3 else None}

    out = snake_record(record)
    moves = []
    for n, m in enumerate(record["moves"], 1):
        placeholder = is_placeholder(m)
        moves.append(
            {
                "id": f"m{n}",
                "type": m["type"],
                "player": m["player"],
                "from_pos": None if placeholder else obj(reference_cell(board, m.get("from"))),
                "to": {"x": 0, "y": 0, "z": None}
                if placeholder
                else obj(reference_cell(board, m.get("to"))),
                "capture_target": None,
                "move_number": n,
                "timestamp": "2026-01-01T00:00:00",
                "think_time": 0,
            }
        )
    out["moves"] = moves
    return out


def to_quality_tier(record: dict[str, Any], board: BoardShape) -> dict[str, Any]:
    """The record as the quality-tier writers give it: cells {x, y}, z left out."""
    out = snake_record(record)
    moves = []
    for m in record["moves"]:
        q: dict[str, Any] = {"type": m["type"], "player": m["player"]}
        if is_placeholder(m):
            q["to"] = {"x": 0, "y": 0}
        else:
            to = reference_cell(board, m["to"])
            q["to"] = None if to is None else {"x": to[0], "y": to[1]}
            frm = reference_cell(board, m.get("from"))
            if frm is not None:
                q["from"] = {"x": frm[0], "y": frm[1]}
        moves.append(q)
    out["moves"] = moves
    return out


def to_canonical(record: dict[str, Any], board: BoardShape) -> dict[str, Any]:
    """Any record as a camelCase GameRecord: moves {type, player, from, to} in cube/xy cells."""
    moves = []
    for m in record["moves"]:
        t = m.get("type") or m["move_type"].lower()
        c: dict[str, Any] = {"type": t, "player": m["player"]}
        if not is_placeholder(m):
            to = reference_cell(board, m["to"] if "to" in m else m["to_pos"])
            frm = reference_cell(board, m.get("from", m.get("from_pos")))
            c["to"] = None if to is None else dict(zip("xyz", to, strict=False))
            if frm is not None:
                c["from"] = dict(zip("xyz", frm, strict=False))
        moves.append(c)
    snake = "board_type" in record
    winner = record.get("winner")
    return {
        "id": record.get("game_id", record.get("id", "g")),
        "boardType": record["board_type"] if snake else record["boardType"],
        "numPlayers": record["num_players"] if snake else record["numPlayers"],
        "winner": None if winner == 0 else winner,
        "moves": moves,
    }


def snake_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record's header in the snake dialect (winner 0: no winner)."""
    if "board_type" in record:
        out = copy.deepcopy({k: v for k, v in record.items() if k != "moves"})
    else:
        out = {
            "game_id": record.get("id"),
            "board_type": record["boardType"],
            "num_players": record["numPlayers"],
            "winner": record.get("winner") or 0,
        }
    return out


FORMATS: dict[str, Callable[[dict[str, Any], BoardShape], dict[str, Any]]] = {
    "gpu_raw": to_gpu_raw,
    "soak": to_soak,
    "quality_tier": to_quality_tier,
}


def canonical_records(corpus: list[Real]) -> Iterator[tuple[Real, dict[str, Any]]]:
    """Every record of the corpus in canonical form (written so, or converted back)."""
    for r in corpus:
        yield r, to_canonical(r.record, BOARDS[r.board])


def test_every_record_converted_to_canonical_encodes_alike(corpus: list[Real]) -> None:
    """Raw, soak, quality-tier and both canonical writers, each read back to the canonical
    camelCase form by the documented conversion: the same samples."""
    for r, canonical in canonical_records(corpus):
        assert_same_samples(
            ENCODER.encode(r.record, r.geometry), ENCODER.encode(canonical, r.geometry), r
        )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_written_from_canonical_encodes_alike(corpus: list[Real], fmt: str) -> None:
    """Each real game, written in each writer's format from its canonical form: the same
    samples, on every board and player count of the corpus (square canvas: x = col, y = row)."""
    boards_seen = set()
    for r, canonical in canonical_records(corpus):
        written = FORMATS[fmt](canonical, BOARDS[r.board])
        assert_same_samples(
            ENCODER.encode(canonical, r.geometry), ENCODER.encode(written, r.geometry), r
        )
        boards_seen.add(r.config)
    assert {"square8_2p", "square8_3p", "hex8_2p", "hexagonal_2p", "square19_3p"} <= boards_seen


def test_the_raw_type_names_are_ringrifts(corpus: list[Real]) -> None:
    table = raw_type_table(corpus)
    assert table["place_ring"] == "PLACEMENT" and table["move_stack"] == "MOVEMENT"
    assert all(v == RAW_TYPES.get(k, k.upper()) for k, v in table.items()), table


# --- what the encoder cannot read is an error naming the field ---------------------------

GOOD = {"type": "place_ring", "player": 1, "to": {"x": 1, "y": 2}}


@pytest.mark.parametrize(
    ("board", "move", "message"),
    [
        ("square8", {"type": "move_stack", "player": 2, "to": "d4"}, "moves[1].to: expected a cell"),
        ("square8", {"move_type": "MOVEMENT", "player": 2, "to_pos": [1, 2, 3]}, "moves[1].to_pos: a canvas position is [row, col]"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 1, "y": 2}, "from_pos": {"row": 1, "col": 2}}, "moves[1].from_pos.row: a cell has only x, y and z"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 1, "y": 2}, "fromPos": {"x": 1, "y": 1}}, "moves[1].fromPos: a position field the grid encoder does not read"),
        ("square8", {"type": "move_stack", "player": 2, "from": {"x": 1, "y": 1}}, "moves[1].to: missing"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 1.5, "y": 2}}, "moves[1].to.x: expected an integer"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 1, "y": 2, "z": -3}}, "moves[1].to.z: a square8 cell has no z"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 8, "y": 0}}, "moves[1].to: cell (8, 0) is off the square8 board"),
        ("square8", {"type": "move_stack", "player": 2, "to": {"x": 1, "y": 2}, "to_pos": [1, 2]}, "moves[1].to_pos: [1, 2] disagrees with moves[1].to"),
        ("square8", {"player": 2, "to": {"x": 1, "y": 2}}, "moves[1].type: missing"),
        ("square8", {"type": 7, "player": 2, "to": {"x": 1, "y": 2}}, "moves[1].type: expected a move type"),
        ("square8", {"type": "move_stack", "player": 3, "to": {"x": 1, "y": 2}}, "moves[1].player: 3 is not a player of 1..2"),
        ("square8", {"type": "move_stack", "to": {"x": 1, "y": 2}}, "moves[1].player: missing"),
        ("square8", ["move_stack", 2], "moves[1]: expected a move object"),
        ("hex8", {"move_type": "MOVEMENT", "player": 2, "to_pos": [0, 0]}, "moves[1].to_pos: canvas [row, col] [0, 0] is cell (-4, -4, 8), off the hex8 board"),
        ("hex8", {"type": "move_stack", "player": 2, "to": {"x": 1, "y": 1, "z": 1}}, "moves[1].to: cube cell (1, 1, 1) does not sum to 0"),
        ("hex8", {"type": "move_stack", "player": 2, "to": {"x": 3, "y": 3}}, "moves[1].to: cell (3, 3, -6) is off the hex8 board"),
    ],
    ids=[
        "string-cell", "canvas-of-three", "cell-row-col", "unread-position-field", "no-destination",
        "float-coordinate", "square-with-z", "off-square", "to-and-to_pos-disagree", "no-type",
        "type-not-a-string", "player-out-of-range", "no-player", "move-not-an-object",
        "hex-canvas-corner", "cube-not-summing-to-0", "hex-xy-off-board",
    ],
)  # fmt: skip
def test_unreadable_move_fields_name_the_field(board: str, move: Any, message: str) -> None:
    good = (
        GOOD
        if board == "square8"
        else {"type": "place_ring", "player": 1, "to": {"x": 1, "y": 2, "z": -3}}
    )
    record = {"board_type": board, "num_players": 2, "winner": 1, "moves": [good, move]}
    geometry = ENCODER.geometry(board, 2)
    ENCODER.encode({**record, "moves": [good]}, geometry)  # the first move alone is fine
    with pytest.raises(EncodeError) as raised:
        ENCODER.encode(record, geometry)
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"moves": None}, "moves: expected a list of moves"),
        ({"moves": []}, "moves: expected a list of moves"),
        ({"winner": 3}, "winner: 3 is not a player of 1..2"),
        ({"board_type": "hex8"}, "board_type: the record is 'hex8', the job square8"),
        ({"num_players": 3}, "num_players: the record has 3 players, the job 2"),
    ],
)
def test_unreadable_record_fields_name_the_field(change: dict[str, Any], message: str) -> None:
    record = {"board_type": "square8", "num_players": 2, "winner": 1, "moves": [GOOD]}
    with pytest.raises(EncodeError, match=f"^{message}"):
        ENCODER.encode({**record, **change}, ENCODER.geometry("square8", 2))


def test_aliases_and_placeholders_are_read() -> None:
    """A board alias (resolved by the daemon) is this board; the pie rule and passes
    have placeholder destinations; a null destination is none."""
    geometry = ENCODER.geometry("hexagonal", 2)
    moves = [
        {"type": "place_ring", "player": 1, "to": {"x": 0, "y": 0, "z": 0}},
        {"type": "swap_sides", "player": 2, "to": {"x": 0, "y": 0}},
        {"type": "skip_capture", "player": 2, "to": {"x": 0, "y": 0, "z": None}},
        {"move_type": "NO_LINE_ACTION", "player": 1, "from_pos": None, "to_pos": None},
        {"type": "skip_recovery", "player": 1, "to": None},
        {"type": "process_line", "player": 1, "to": None},
    ]
    samples = ENCODER.encode({"board_type": "hex", "num_players": 2, "moves": moves}, geometry)
    assert samples.policy.tolist() == [12 * 25 + 12] + [geometry.pass_index] * 5


# --- the job: a bad record is reported with its file and line, the rest train -----------


def test_a_game_the_encoder_cannot_read_is_reported_and_the_rest_train(
    corpus: list[Real], make_spec: SpecFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trainkit import spans_of

    good = in_folder(corpus, "soak/soak.square8_2p")[:4]
    bad = copy.deepcopy(good[1].record)
    i = next(i for i, m in enumerate(bad["moves"]) if i > 0 and not is_placeholder(m))
    bad["moves"][i]["from_pos"] = {"row": 3, "col": 4}
    path = tmp_path / "selfplay" / "soak.jsonl"
    path.parent.mkdir()
    lines = [good[0].text, good[2].text, json.dumps(bad).encode(), good[3].text]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    games = spans_of([path])
    with caplog.at_level(logging.WARNING, logger="ringd.train.prepare"):
        code, run = run_in_process(make_spec(games, hyper={"steps": 2}))
    assert code == ExitCode.OK, run.all()
    start = run.one("start")
    assert (start["usable_games"], start["rejected_games"]) == (3, 1)
    why = f"encode_error: {path}:3: moves[{i}].from_pos.row: a cell has only x, y and z"
    assert start["rejected"][0]["seq"] == games[2]["seq"]
    assert start["rejected"][0]["reason"].startswith(why), start["rejected"]
    assert any(m.startswith(why) for m in caplog.messages), caplog.messages
    # A second job finds the game rejected in the cache and still says where it is.
    again_spec = make_spec(
        games, job_id="square8_2p-000002", output_dir=str(tmp_path / "job2"), hyper={"steps": 2}
    )
    code, run = run_in_process(again_spec)
    assert code == ExitCode.OK
    again = run.one("start")["rejected"][0]["reason"]
    assert again.startswith(f"encode_error: {path}:3: rejected by the encoder when first seen")


# --- a tiny network trains on each configuration the corpus holds ------------------------


def _spans(records: list[Real]) -> list[dict[str, Any]]:
    """The records as the ledger hands them to a job: one per game key, in corpus order."""
    games: list[dict[str, Any]] = []
    for r in _unique(records):
        games.append(
            {
                "path": str(SELFPLAY / r.file),
                "offset": r.offset,
                "length": len(r.text),
                "key": game_key(r.text).hex(),
                "seq": len(games) + 1,
            }
        )
    return games


CONFIGS = ["square8_2p", "square8_3p", "hex8_2p", "hexagonal_2p", "square19_3p", "square19_4p"]


@pytest.mark.parametrize("config", CONFIGS)
def test_a_tiny_network_trains_on_each_real_configuration(
    corpus: list[Real], make_spec: SpecFactory, config: str
) -> None:
    records = [r for r in corpus if r.config == config]
    assert records
    games = _spans(records)
    board, players = records[0].board, records[0].players
    spec = make_spec(
        games,
        job_id=f"{config}-000001",
        config=config,
        board=board,
        players=players,
        new_from_seq=1,
        hyper={"steps": 3, "batch_size": 16},
    )
    code, run = run_in_process(spec)
    assert code == ExitCode.OK, run.all()
    start, done = run.one("start"), run.one("done")
    assert start["usable_games"] == len(games), start
    assert start["missing_games"] == start["rejected_games"] == 0
    assert start["samples"] == sum(len(r.record["moves"]) for r in _unique(records))
    assert done["steps"] == 3 and np.isfinite(done["loss"])


def _unique(records: list[Real]) -> list[Real]:
    seen, out = set(), []
    for r in records:
        key = game_key(r.text)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
def test_line_numbers_of_byte_offsets(tmp_path: Path, block: int) -> None:
    from ringd.train.prepare import _line_numbers

    lines = [b"a" * n for n in (0, 5, 1, 12, 3, 0, 8)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    starts = [sum(len(x) + 1 for x in lines[:k]) for k in range(len(lines))]
    got = _line_numbers(str(path), [*reversed(starts), 10_000], block=block)
    assert got == {offset: k + 1 for k, offset in enumerate(starts)}
    assert _line_numbers(str(tmp_path / "gone.jsonl"), [0]) == {}
