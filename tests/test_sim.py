"""The selfplay simulator makes games the rest of ringd can trust as test input.

Everything here runs on real files and real writer processes; nothing is mocked.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ringd.boards import BOARDS, CONFIGS, BoardShape, canvas_from_cell, cell_from_canvas
from ringd.sim import (
    game_line,
    is_pass_move,
    make_record,
    parse_config,
    run_writers,
    sim_main,
    write_corpus,
)
from ringd.sim.records import make_record_in_style

CAMEL_MOVE_TYPES = {
    "place_ring",
    "skip_placement",
    "no_placement_action",
    "move_stack",
    "overtaking_capture",
    "continue_capture_segment",
    "skip_capture",
    "no_movement_action",
    "forced_elimination",
    "no_line_action",
    "choose_line_option",
    "eliminate_rings_from_stack",
    "no_territory_action",
    "choose_territory_option",
}
RAW_MOVE_TYPES = {
    "PLACEMENT",
    "MOVEMENT",
    "CAPTURE",
    "CHAIN_CAPTURE",
    "LINE_FORMATION",
    "ELIMINATION",
    "FORCED_ELIMINATION",
    "TERRITORY_CLAIM",
    "SKIP",
    "NO_ACTION",
}
NULLABLE_MOVE_FIELDS = (
    "captureTarget",
    "placementCount",
    "placedOnStack",
    "formedLines",
    "collapsedMarkers",
    "disconnectedRegions",
    "eliminatedRings",
)


def _golden_dir() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "fixtures" / "ringrift-golden"
        if candidate.is_dir():
            return candidate
    return None


def _cell(board: BoardShape, pos: Any) -> tuple[int, ...]:
    assert isinstance(pos, dict), pos
    if board.kind == "square":
        assert set(pos) == {"x", "y"}, pos
        return (pos["x"], pos["y"])
    assert set(pos) == {"x", "y", "z"}, pos
    return (pos["x"], pos["y"], pos["z"])


def _check_canonical_move(board: BoardShape, players: int, move: dict[str, Any]) -> None:
    assert move["type"] in CAMEL_MOVE_TYPES
    assert 1 <= move["player"] <= players
    assert isinstance(move.get("thinkTimeMs", 0), int)  # tiny games leave it out
    if is_pass_move(move):
        assert move["to"] in ({"x": 0, "y": 0}, {"x": 0, "y": 0, "z": None}), move
        assert move.get("from") is None
        if board.kind == "square":
            assert move["to"] == {"x": 0, "y": 0}
        return
    assert board.contains(_cell(board, move["to"])), move
    if move["type"] == "place_ring":
        assert move.get("from") is None
    if move["type"] in ("move_stack", "overtaking_capture", "continue_capture_segment"):
        assert board.contains(_cell(board, move["from"])), move
    if move["type"] in ("overtaking_capture", "continue_capture_segment"):
        assert board.contains(_cell(board, move["captureTarget"])), move
    for line in move.get("formedLines") or []:
        assert line["player"] == move["player"]
        assert all(board.contains(_cell(board, p)) for p in line["positions"])
    for region in move.get("disconnectedRegions") or []:
        assert all(board.contains(_cell(board, p)) for p in region["spaces"])


def _check_raw_move(board: BoardShape, players: int, move: dict[str, Any]) -> None:
    # The corpus splices each game's id into its first move too (ringd.sim.lines).
    assert set(move) - {"id"} == {"move_type", "from_pos", "to_pos", "player"}, move
    assert move["move_type"] in RAW_MOVE_TYPES
    assert 1 <= move["player"] <= players
    if is_pass_move(move):
        assert move["to_pos"] is None and move["from_pos"] is None
        return
    assert board.contains(cell_from_canvas(board, *move["to_pos"])), move
    if move["from_pos"] is not None:
        assert board.contains(cell_from_canvas(board, *move["from_pos"])), move
    if move["move_type"] == "PLACEMENT":
        assert move["from_pos"] is None


def _check_record(record: dict[str, Any]) -> tuple[str, str]:
    """Assert a record is well formed for its dialect; return (dialect, config)."""
    if "id" in record:
        assert isinstance(record["id"], str) and record["id"]
        board, players = BOARDS[record["boardType"]], record["numPlayers"]
        config = f"{board.name}_{players}p"
        assert config in CONFIGS
        winner = record.get("winner")
        assert winner is None or 1 <= winner <= players
        assert isinstance(record["moves"], list)
        if "totalMoves" in record:
            assert record["totalMoves"] == len(record["moves"])
        for number, move in enumerate(record["moves"], start=1):
            assert move["moveNumber"] == number
            _check_canonical_move(board, players, move)
        return "camel", config
    assert isinstance(record["game_id"], str) and record["game_id"]
    board, players = BOARDS[record["board_type"]], record["num_players"]
    config = f"{board.name}_{players}p"
    assert config in CONFIGS
    assert record["board_size"] == (board.size if board.kind == "square" else 2 * board.size + 1)
    assert 0 <= record["winner"] <= players  # 0: a draw, as GPU selfplay writes it
    assert record["move_count"] == len(record["moves"])
    assert record["source"] == "gpu_selfplay"
    for move in record["moves"]:
        if "move_type" in move:
            _check_raw_move(board, players, move)
        else:
            _check_canonical_move(board, players, move)
    return "snake", config


def _read_lines(path: Path) -> tuple[list[bytes], bytes]:
    """Complete lines and the unfinished tail after the last newline."""
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    return lines, tail


# ----------------------------------------------------------------------------- boards


def test_boards_have_ringrift_cell_counts() -> None:
    counts = {name: len(board.cells()) for name, board in BOARDS.items()}
    assert counts == {"square8": 64, "square19": 361, "hex8": 61, "hexagonal": 469}
    assert len(set(BOARDS["hexagonal"].cells())) == 469


def test_hex_cells_are_cube_coordinates_within_the_radius() -> None:
    for name in ("hex8", "hexagonal"):
        board = BOARDS[name]
        for x, y, z in board.cells():
            assert x + y + z == 0
            assert max(abs(x), abs(y), abs(z)) <= board.size
    assert BOARDS["hex8"].size == 4 and BOARDS["hexagonal"].size == 12


def test_square_cells_are_x_y_pairs_inside_the_side() -> None:
    board = BOARDS["square19"]
    assert all(len(c) == 2 and min(c) >= 0 and max(c) < 19 for c in board.cells())


def test_configs_are_every_board_with_two_to_four_players() -> None:
    assert len(CONFIGS) == 12 and len(set(CONFIGS)) == 12
    assert {parse_config(c) for c in CONFIGS} == {
        (board, n) for board in BOARDS.values() for n in (2, 3, 4)
    }
    with pytest.raises(ValueError):
        parse_config("hex9_2p")


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize("config", CONFIGS)
def test_camel_records_carry_the_golden_fields(config: str) -> None:
    rng = random.Random(config)
    _board, players = parse_config(config)
    for i in range(6):
        record: dict[str, Any] = make_record(rng, config, "camel", f"game-{i}")
        assert _check_record(record) == ("camel", config)
        assert record["id"] == f"game-{i}"
        assert record["isRated"] is False
        assert [p["playerNumber"] for p in record["players"]] == list(range(1, players + 1))
        for p in record["players"]:
            assert p["playerType"] == "ai"
            assert {"username", "aiDifficulty", "aiType"} <= set(p)
        assert {"startedAt", "endedAt", "totalDurationMs", "outcome", "metadata"} <= set(record)
        assert set(record["finalScore"]["ringsRemaining"]) == {
            str(n) for n in range(1, players + 1)
        }
        # Players take turns: a new turn always belongs to the next player.
        turn_players = [m["player"] for m in record["moves"]]
        changes = [b for a, b in itertools.pairwise(turn_players) if a != b]
        prev = turn_players[0] if turn_players else 1
        for nxt in changes:
            assert nxt == prev % players + 1
            prev = nxt


@pytest.mark.parametrize("config", CONFIGS)
def test_snake_records_carry_the_gpu_selfplay_fields(config: str) -> None:
    rng = random.Random(config)
    for i in range(6):
        record: dict[str, Any] = make_record(rng, config, "snake", f"gpu-{i}")
        assert _check_record(record) == ("snake", config)
        assert record["game_id"] == f"gpu-{i}"
        assert record["status"] == "completed"
        assert isinstance(record["victory_type"], str)
        assert (
            isinstance(record["initial_state"], dict)
            and len(json.dumps(record["initial_state"])) < 500
        )


def test_snake_moves_come_raw_or_canonical_chosen_per_game() -> None:
    rng = random.Random(7)
    forms: Counter[str] = Counter()
    for i in range(60):
        moves = make_record(rng, "square8_2p", "snake", str(i), moves=8)["moves"]
        assert isinstance(moves, list)
        kinds = {"raw" if "move_type" in m else "canonical" for m in moves}
        assert len(kinds) == 1  # one form per game
        forms[kinds.pop()] += 1
    assert forms["raw"] > 0 and forms["canonical"] > 0


def test_full_style_moves_have_exactly_the_golden_move_keys() -> None:
    golden = _golden_dir()
    if golden is None:
        pytest.skip("golden fixtures not found")
    full = json.loads((golden / "fullgame_hex8_2p_f6bb4e8e.json").read_text())
    golden_move_keys = set(full["moves"][0])
    golden_top_keys = set(full)
    rng = random.Random(11)
    seen_full = 0
    for i in range(30):
        record = make_record(rng, "hex8_2p", "camel", str(i), moves=20)
        assert golden_top_keys - {"winner"} <= set(record)
        moves = record["moves"]
        assert isinstance(moves, list)
        if all(set(m) == golden_move_keys for m in moves):
            seen_full += 1
        else:  # the sparse fsm-canonical style: a subset, never an unknown key
            assert all(set(m) <= golden_move_keys for m in moves)
    assert seen_full > 0


def test_winner_is_sometimes_null_and_sometimes_absent() -> None:
    rng = random.Random(3)
    states: Counter[str] = Counter()
    for i in range(300):
        record = make_record(rng, "square8_2p", "camel", str(i), moves=4)
        states["absent" if "winner" not in record else type(record["winner"]).__name__] += 1
    assert states["int"] > 0 and states["NoneType"] > 0 and states["absent"] > 0


@pytest.mark.parametrize("config", CONFIGS)
def test_move_targets_are_real_cells_and_passes_use_the_placeholder(config: str) -> None:
    board, _players = parse_config(config)
    rng = random.Random(f"cells-{config}")
    passes = 0
    for i in range(10):
        for dialect in ("camel", "snake"):
            record = make_record(rng, config, dialect, str(i))
            _check_record(record)  # checks cells and placeholders move by move
            moves = record["moves"]
            assert isinstance(moves, list)
            passes += sum(is_pass_move(m) for m in moves)
    assert passes > 0
    # Hex passes in the full style carry "z": null like the golden record.
    if board.kind == "hex":
        found = False
        for i in range(20):
            moves = make_record_in_style(rng, config, "camel", str(i), 12, "full")["moves"]
            assert isinstance(moves, list)
            found |= any(m["to"] == {"x": 0, "y": 0, "z": None} for m in moves if is_pass_move(m))
        assert found


@pytest.mark.parametrize("board_name", list(BOARDS))
def test_raw_positions_are_canvas_row_then_col(board_name: str) -> None:
    """As RingRift's GPU selfplay writes them: [row, col] on the board's canvas (square
    x = col, y = row; hex of radius r x = col - r, y = row - r)."""
    config = f"{board_name}_2p"
    board = BOARDS[board_name]
    # Same seed and length: the same game, serialised both ways.
    raw = make_record_in_style(random.Random(5), config, "snake", "g", 60, "raw")["moves"]
    canon = make_record_in_style(random.Random(5), config, "snake", "g", 60, "full")["moves"]
    assert isinstance(raw, list) and isinstance(canon, list)
    for r, c in zip(raw, canon, strict=True):
        if is_pass_move(c):
            assert is_pass_move(r)
            continue
        to = _cell(board, c["to"])
        r_ = board.size if board.kind == "hex" else 0
        assert r["to_pos"] == [to[1] + r_, to[0] + r_] == list(canvas_from_cell(board, to))
        assert cell_from_canvas(board, *r["to_pos"]) == to
        if c["from"] is not None:
            assert cell_from_canvas(board, *r["from_pos"]) == _cell(board, c["from"])


def test_default_move_counts_give_real_sized_lines() -> None:
    expected = {
        "square8": (40, 120),
        "hex8": (60, 150),
        "square19": (150, 400),
        "hexagonal": (150, 400),
    }
    rng = random.Random(1)
    for board_name, (low, high) in expected.items():
        sizes = []
        for i in range(12):
            record = make_record(rng, f"{board_name}_2p", "camel", str(i))
            moves = record["moves"]
            assert isinstance(moves, list)
            assert low <= len(moves) <= high
            sizes.append(len(game_line(record)))
        assert 10_000 <= statistics.median(sizes) <= 100_000, (board_name, sizes)


def test_moves_argument_fixes_the_move_count() -> None:
    for n in (0, 1, 2, 37):
        record = make_record(random.Random(n), "hexagonal_4p", "camel", "g", moves=n)
        assert record["totalMoves"] == n
        assert len(record["moves"]) == n  # type: ignore[arg-type]


def test_make_record_is_reproducible_from_the_rng() -> None:
    a = make_record(random.Random(99), "hex8_3p", "snake", "same")
    b = make_record(random.Random(99), "hex8_3p", "snake", "same")
    assert game_line(a) == game_line(b)


def test_game_line_is_compact_json_ending_in_one_newline() -> None:
    record = make_record(random.Random(2), "square8_2p", "camel", "abc", moves=10)
    line = game_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b", " not in line and b'": ' not in line
    assert json.loads(line) == record


# ----------------------------------------------------------------------------- corpus


def _scan(files: list[Path]) -> tuple[int, int, Counter[str], Counter[str], set[bytes]]:
    games = 0
    nbytes = 0
    per_config: Counter[str] = Counter()
    dialects: Counter[str] = Counter()
    lines_seen: set[bytes] = set()
    for path in files:
        lines, tail = _read_lines(path)
        assert tail == b"", f"{path} does not end in a newline"
        nbytes += path.stat().st_size
        for line in lines:
            dialect, config = _check_record(json.loads(line))
            games += 1
            per_config[config] += 1
            dialects[dialect] += 1
            lines_seen.add(line)
    return games, nbytes, per_config, dialects, lines_seen


def test_write_corpus_counts_match_the_lines_on_disk(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, 40, 15, seed=3)
    assert len(info.files) == 40 and info.games == 600
    on_disk = sorted(tmp_path.rglob("*.jsonl"))
    assert sorted(info.files) == on_disk
    games, nbytes, per_config, dialects, distinct = _scan(info.files)
    assert games == info.games
    assert nbytes == info.bytes
    assert dict(per_config) == info.per_config
    assert len(distinct) == games  # every line is a different game
    assert dialects["camel"] > 0 and dialects["snake"] > 0
    assert info.games / max(1, info.bytes) < 1 / 5_000  # real-sized, not tiny


def test_write_corpus_spreads_files_over_ringrift_like_folders(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, 80, 1, seed=4, small=True)
    tops = {p.relative_to(tmp_path).parts[0] for p in info.files}
    patterns = [r"gpu", r"mcts_\d+", r"hybrid_\d+", r"daemon_\d+", r"cluster_\d+"]
    for pattern in patterns:
        assert any(re.fullmatch(pattern, top) for top in tops), pattern
    odd = [t for t in tops if not any(re.fullmatch(p, t) for p in patterns)]
    assert odd, "no oddly named folder"
    assert any(len(p.relative_to(tmp_path).parts) > 2 for p in info.files)  # nested


def test_write_corpus_small_games_are_tiny_and_valid(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, 10, 200, seed=5, small=True)
    games, nbytes, per_config, _dialects, distinct = _scan(info.files)
    assert games == info.games == 2000 and nbytes == info.bytes
    assert dict(per_config) == info.per_config
    assert len(distinct) == games
    sizes = [len(line) + 1 for path in info.files for line in _read_lines(path)[0]]
    assert 150 <= statistics.median(sizes) <= 300
    assert max(sizes) < 400


def test_write_corpus_honours_dialect_and_configs(tmp_path: Path) -> None:
    wanted = ["hex8_3p", "square19_2p"]
    for dialect in ("camel", "snake"):
        root = tmp_path / dialect
        info = write_corpus(root, 6, 10, seed=6, dialect=dialect, configs=wanted, small=True)
        _games, _nbytes, per_config, dialects, _distinct = _scan(info.files)
        assert set(per_config) <= set(wanted)
        assert set(dialects) == {dialect}
    with pytest.raises(ValueError):
        write_corpus(tmp_path / "bad", 1, 1, configs=["hex8_9p"])
    with pytest.raises(ValueError):
        write_corpus(tmp_path / "bad", 1, 1, dialect="kebab")


def test_write_corpus_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_corpus(tmp_path / "a", 5, 8, seed=12)
    b = write_corpus(tmp_path / "b", 5, 8, seed=12)
    assert [p.relative_to(tmp_path / "a") for p in a.files] == [
        p.relative_to(tmp_path / "b") for p in b.files
    ]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a.files, b.files, strict=True))


# ----------------------------------------------------------------------------- writers


def _check_writer_files(result_files: dict[Path, int]) -> tuple[int, Counter[str], set[bytes]]:
    games = 0
    per_config: Counter[str] = Counter()
    distinct: set[bytes] = set()
    for path, reported in result_files.items():
        lines, tail = _read_lines(path)
        assert tail == b""
        assert len(lines) == reported, path
        for line in lines:
            per_config[_check_record(json.loads(line))[1]] += 1
            distinct.add(line)
        games += len(lines)
    return games, per_config, distinct


def test_run_writers_report_exactly_the_complete_lines_on_disk(tmp_path: Path) -> None:
    result = run_writers(tmp_path, writers=4, rate=120, duration=1.0, seed=1)
    assert len(result.files) == 4
    assert sorted(tmp_path.rglob("*.jsonl")) == sorted(result.files)
    games, per_config, distinct = _check_writer_files(result.per_file)
    assert games == result.games
    assert dict(per_config) == result.per_config
    assert len(distinct) == games
    # About rate x duration; generous bounds, the machine may be busy.
    assert 40 <= result.games <= 130
    assert result.bytes == sum(p.stat().st_size for p in result.files)


def test_run_writers_stop_after_the_requested_games_and_never_repeat_a_line(
    tmp_path: Path,
) -> None:
    first = run_writers(tmp_path, writers=4, rate=0, games=23, rotate_every=2, small=True)
    assert first.games == 23
    assert len(first.files) == 12  # quotas 6, 6, 6, 5 in files of two games
    # Same seed, same files: appended games must still be new games.
    second = run_writers(tmp_path, writers=4, rate=0, games=23, rotate_every=2, small=True)
    assert second.files == first.files
    per_file = {p: first.per_file[p] + second.per_file[p] for p in first.files}
    games, _per_config, distinct = _check_writer_files(per_file)
    assert games == 46 and len(distinct) == 46


def test_kill_mid_line_leaves_each_file_ending_in_a_partial_line(tmp_path: Path) -> None:
    result = run_writers(tmp_path, writers=3, rate=0, games=12, kill_mid_line=True)
    assert result.games == 12
    assert sorted(result.partial_files) == sorted(result.files) and len(result.files) == 3
    for path in result.files:
        lines, tail = _read_lines(path)
        assert tail, f"{path} ends in a newline"
        assert len(lines) == result.per_file[path]
        for line in lines:
            _check_record(json.loads(line))
        with pytest.raises(json.JSONDecodeError):
            json.loads(tail)


def test_partial_every_lets_a_reader_see_an_unfinished_line(tmp_path: Path) -> None:
    seen_partial = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen_partial.is_set():
            for path in tmp_path.rglob("*.jsonl"):
                with open(path, "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    if size:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            seen_partial.set()
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_writers(tmp_path, writers=2, rate=100, duration=1.0, partial_every=2)
    finally:
        done.set()
        watcher.join()
    assert seen_partial.is_set()
    games, _per_config, _distinct = _check_writer_files(result.per_file)
    assert games == result.games > 0


def test_run_writers_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_writers(tmp_path, writers=0, rate=1, games=1)
    with pytest.raises(ValueError):
        run_writers(tmp_path, writers=1, rate=1, games=1, configs=["octagon_2p"])


# ----------------------------------------------------------------------------- CLI


def _summary_games(text: str) -> int:
    match = re.search(r"(\d+) games", text)
    assert match, text
    return int(match.group(1))


def test_sim_main_corpus_mode_prints_a_one_line_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_main([str(tmp_path), "--corpus", "3:7", "--small", "--configs", "hex8_2p"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert _summary_games(out) == 21 and "3 files" in out and "hex8_2p=21" in out


def test_sim_main_refuses_an_unknown_config(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        sim_main([str(tmp_path), "--configs", "hex8_2p,hex9_2p", "--games", "1"])
    assert exc.value.code == 2


def _ringd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `ringd` console script, the way an operator types the command."""
    ringd = Path(sys.executable).parent / "ringd"
    assert ringd.exists(), "the ringd console script is installed beside this python"
    return subprocess.run(
        [str(ringd), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_ringd_sim_help_prints_the_sim_usage(flag: str) -> None:
    proc = _ringd("sim", flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ringd sim"), proc.stdout
    assert "--writers N" in proc.stdout and "--corpus FILES:GAMES_PER_FILE" in proc.stdout


def test_ringd_sim_takes_options_before_out_dir(tmp_path: Path) -> None:
    proc = _ringd("sim", "--writers", "1", "--games", "3", "--small", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert _summary_games(proc.stdout) == 3
    (path,) = tmp_path.rglob("*.jsonl")
    lines, tail = _read_lines(path)
    assert len(lines) == 3 and tail == b""


def test_python_m_ringd_sim_runs_writer_processes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringd.sim",
            str(tmp_path),
            "--games",
            "9",
            "--writers",
            "3",
            "--dialect",
            "snake",
            "--kill-mid-line",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert _summary_games(proc.stdout) == 9 and "end mid-line" in proc.stdout
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert len(files) == 3
    total = 0
    for path in files:
        lines, tail = _read_lines(path)
        assert tail
        total += len(lines)
        assert all(_check_record(json.loads(line))[0] == "snake" for line in lines)
    assert total == 9


def test_sigterm_stops_an_unbounded_run_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ringd.sim",
            str(tmp_path),
            "--writers",
            "2",
            "--rate",
            "40",
            "--small",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        files = list(tmp_path.rglob("*.jsonl"))
        if len(files) == 2 and all(p.stat().st_size for p in files):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = sum(len(_read_lines(p)[0]) for p in tmp_path.rglob("*.jsonl"))
    assert lines == _summary_games(out) > 0


def test_writers_stop_when_their_parent_dies(tmp_path: Path) -> None:
    # A demo runs run_writers in a thread; if that process is killed, its writers
    # (in their own session, out of reach of the terminal) must not live on.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading, time\n"
            "from pathlib import Path\n"
            "from ringd.sim import run_writers\n"
            "threading.Thread(target=run_writers, args=(Path(sys.argv[1]),),\n"
            "    kwargs={'writers': 2, 'rate': 40, 'duration': 60, 'small': True},\n"
            "    daemon=True).start()\n"
            "time.sleep(60)\n",
            str(tmp_path),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            files = list(tmp_path.rglob("*.jsonl"))
            if len(files) == 2 and all(p.stat().st_size for p in files):
                break
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    time.sleep(0.5)
    sizes = {p: p.stat().st_size for p in tmp_path.rglob("*.jsonl")}
    assert len(sizes) == 2
    time.sleep(0.5)  # at 20 games/s each, a live writer would have grown its file
    assert sizes == {p: p.stat().st_size for p in tmp_path.rglob("*.jsonl")}
