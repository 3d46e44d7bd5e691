"""Cursor rules and discovery: every game below the roots is counted exactly once."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from harness import append, game_line
from ringd.cursor import FileChange, FileStat, index_file, read_chunks
from ringd.ledger import Ledger
from ringd.records import Reason, Rules
from ringd.scan import ScanReport, scan

MAX_LINE = 1024 * 1024
RULES = Rules(max_line=MAX_LINE)


def run_scan(root: Path, ledger: Ledger) -> ScanReport:
    return scan(ledger, [root], RULES)


def counts(ledger: Ledger) -> dict[str, int]:
    return {c.name: c.total for c in ledger.config_counts() if c.total}


def test_golden_records_as_jsonl_are_counted_under_square8_and_hex8(
    tmp_path: Path, golden_lines: list[bytes]
) -> None:
    append(tmp_path / "sp" / "gpu" / "golden.jsonl", b"".join(golden_lines))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"square8_2p": 3, "hex8_2p": 2}
        assert report.new_total == 5 and not report.errors


def test_a_file_of_20000_games_counts_20000(tmp_path: Path) -> None:
    append(
        tmp_path / "sp" / "big.jsonl", b"".join(game_line("square8", 2, i) for i in range(20_000))
    )
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"square8_2p": 20_000}


def test_hex8_games_never_land_in_hexagonal(tmp_path: Path) -> None:
    append(
        tmp_path / "sp" / "hybrid_1" / "a.jsonl",
        b"".join(game_line("hex8", 2, i) for i in range(30)),
    )
    append(
        tmp_path / "sp" / "hybrid_1" / "b.jsonl",
        b"".join(game_line("hexagonal", 2, i) for i in range(7)),
    )
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"hex8_2p": 30, "hexagonal_2p": 7}


def test_copies_of_a_game_in_two_directories_count_once(tmp_path: Path) -> None:
    games = b"".join(game_line("square8", 3, i) for i in range(50))
    append(tmp_path / "sp" / "gpu" / "s.jsonl", games)
    append(tmp_path / "sp" / "cluster_2" / "host7" / "copy.jsonl", games)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"square8_3p": 50}
        assert report.games_read == 100 and report.new_total == 50


def test_any_directory_name_and_one_created_after_the_previous_scan(tmp_path: Path) -> None:
    root = tmp_path / "sp"
    append(root / "mcts_3" / "a.jsonl", game_line("square8", 2, 1))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(root, ledger)
        append(
            root / "a name nobody thought of" / "deep" / "er" / "b.jsonl",
            game_line("square8", 2, 2),
        )
        append(root / "daemon_x" / "c.jsonl", game_line("square8", 2, 3))
        (root / "not-a-game.json").write_bytes(game_line("square8", 2, 4))
        run_scan(root, ledger)
        assert counts(ledger) == {"square8_2p": 3}


def test_a_trailing_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "sp" / "gpu" / "a.jsonl"
    line = game_line("square8", 2, 9)
    append(path, game_line("square8", 2, 1) + line[:20])
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"square8_2p": 1}
        row = ledger.file(str(path))
        assert row is not None and row.cursor.offset == len(game_line("square8", 2, 1))
        assert run_scan(tmp_path / "sp", ledger).files_read == 0  # unchanged: stat only
        append(path, line[20:])
        run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"square8_2p": 2}
        assert ledger.rejected_total() == 0


def test_truncation_reads_from_the_start_and_the_count_stays_exact(tmp_path: Path) -> None:
    path = tmp_path / "sp" / "a.jsonl"
    append(path, b"".join(game_line("hex8", 2, i) for i in range(10)))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        path.write_bytes(b"".join(game_line("hex8", 2, i) for i in (3, 100)))
        report = run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"hex8_2p": 11}
        assert report.games_read == 2


def test_a_rewrite_that_grows_past_the_old_size_is_caught_by_the_fingerprint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sp" / "a.jsonl"
    append(path, b"".join(game_line("hex8", 2, i) for i in range(10)))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        ino = os.stat(path).st_ino
        with open(path, "r+b") as f:  # same inode, new content, longer than before
            f.write(b"".join(game_line("hex8", 2, i, pad=10) for i in range(1000, 1020)))
        assert os.stat(path).st_ino == ino
        run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"hex8_2p": 30}


def test_a_replaced_file_with_a_new_inode_is_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "sp" / "a.jsonl"
    append(path, b"".join(game_line("hex8", 2, i) for i in range(10)))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        tmp = path.with_suffix(".tmp")
        # Longer and starting with the same games: only a new inode tells it apart.
        tmp.write_bytes(b"".join(game_line("hex8", 2, i) for i in range(15)))
        os.replace(tmp, path)
        report = run_scan(tmp_path / "sp", ledger)
        assert counts(ledger) == {"hex8_2p": 15}
        assert report.games_read == 15


def test_empty_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "sp" / "gpu").mkdir(parents=True)
    (tmp_path / "sp" / "gpu" / "empty.jsonl").touch()
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = run_scan(tmp_path / "sp", ledger)
        assert report.files == 1 and report.files_read == 0
        assert ledger.files() == {}


def test_removed_files_are_marked_gone_and_their_games_stay_counted(tmp_path: Path) -> None:
    path = tmp_path / "sp" / "a.jsonl"
    append(path, b"".join(game_line("hex8", 4, i) for i in range(4)))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run_scan(tmp_path / "sp", ledger)
        path.unlink()
        assert run_scan(tmp_path / "sp", ledger).gone == 1
        assert ledger.files()[str(path)].gone
        assert counts(ledger) == {"hex8_4p": 4}
        append(path, game_line("hex8", 4, 4))
        run_scan(tmp_path / "sp", ledger)
        assert not ledger.files()[str(path)].gone
        assert counts(ledger) == {"hex8_4p": 5}


def test_every_reject_reason_is_counted_and_ingest_continues(tmp_path: Path) -> None:
    bad = [
        b"",
        b'{"boardType":"square8","numPlayers":2,"s":"\xff"}',
        b"not json",
        b"[1,2]",
        b'{"numPlayers":2}',
        b'{"boardType":7,"numPlayers":2}',
        b'{"boardType":"Hex 8","numPlayers":2}',
        b'{"boardType":"hex8"}',
        b'{"boardType":"hex8","numPlayers":"two"}',
        b'{"boardType":"hex8","numPlayers":12}',
        b'{"boardType":"hex8","board_type":"square8","numPlayers":2}',
        b'{"boardType":"hex8","numPlayers":2,"pad":"' + b"x" * 3000 + b'"}',
        b'{"boardType":"hex8","numPlayers":2,"status":"in_progress","moves":[{"to":1}]}',
        b'{"boardType":"hex8","numPlayers":2,"moves":null}',
    ]
    data = b"".join(game_line("hex8", 2, i) + b + b"\n" for i, b in enumerate(bad))
    append(tmp_path / "sp" / "a.jsonl", data + game_line("hex8", 2, 99))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = scan(ledger, [tmp_path / "sp"], Rules(max_line=2048))
        assert counts(ledger) == {"hex8_2p": len(bad) + 1}
        assert ledger.reject_counts() == {reason.value: 1 for reason in Reason}
        assert report.rejects == ledger.reject_counts()
        # Rejects are remembered with their place, and not counted again.
        run_scan(tmp_path / "sp", ledger)
        assert ledger.rejected_total() == len(Reason)


def test_a_line_over_the_limit_is_skipped_without_holding_it_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    huge = b'{"boardType":"hex8","numPlayers":2,"pad":"' + b"x" * (40 * 1024 * 1024) + b'"}\n'
    path.write_bytes(game_line("hex8", 2, 1) + huge + game_line("hex8", 2, 2))
    del huge
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        chunks = list(read_chunks(fd, 0, max_line=1024 * 1024, chunk_bytes=256 * 1024))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        os.close(fd)
    assert peak < 4 * 1024 * 1024
    assert [len(c.lines) for c in chunks if c.lines] and sum(len(c.lines) for c in chunks) == 2
    assert [length for c in chunks for _, length in c.too_long] == [40 * 1024 * 1024 + 44]


def test_an_unterminated_over_long_line_waits_like_any_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "sp" / "a.jsonl"
    append(path, game_line("hex8", 2, 1) + b'{"pad":"' + b"x" * 5000)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        scan(ledger, [tmp_path / "sp"], Rules(max_line=2048))
        assert ledger.rejected_total() == 0
        append(path, b'"}\n' + game_line("hex8", 2, 2))
        scan(ledger, [tmp_path / "sp"], Rules(max_line=2048))
        assert ledger.reject_counts() == {"line_too_long": 1}
        assert counts(ledger) == {"hex8_2p": 2}


def test_symlink_loops_are_reported_and_not_followed_forever(tmp_path: Path) -> None:
    root = tmp_path / "sp"
    append(root / "a" / "x.jsonl", game_line("square8", 2, 1))
    (root / "a" / "loop").symlink_to(root)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = run_scan(root, ledger)
        assert counts(ledger) == {"square8_2p": 1}
        assert any("symlink loop" in e for e in report.errors)


def test_a_missing_root_is_reported_not_fatal(tmp_path: Path) -> None:
    append(tmp_path / "sp" / "x.jsonl", game_line("square8", 2, 1))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = scan(ledger, [tmp_path / "absent", tmp_path / "sp"], RULES)
        assert counts(ledger) == {"square8_2p": 1}
        assert report.errors == [f"{tmp_path / 'absent'}: watched root does not exist (yet)"]


def test_index_file_stat_only_when_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(game_line("square8", 2, 1))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert index_file(ledger, str(path), RULES).change is FileChange.NEW
        assert index_file(ledger, str(path), RULES).change is FileChange.UNCHANGED
        append(path, game_line("square8", 2, 2))
        result = index_file(ledger, str(path), RULES)
        assert result.change is FileChange.VERIFY and result.new_total == 1
        row = ledger.file(str(path))
        assert row is not None
        assert FileStat.of(os.stat(path)).size == row.cursor.offset == row.cursor.size


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    scan_after=st.lists(st.booleans(), min_size=13, max_size=13),
)
def test_any_split_of_the_same_bytes_into_writes_yields_the_same_games(
    cuts: list[int], scan_after: list[bool]
) -> None:
    data = (
        b"".join(
            game_line(board, n, i)
            for i, (board, n) in enumerate([("square8", 2), ("hex8", 3), ("hexagonal", 2)] * 6)
        )
        + b"garbage\n"
        + game_line("square19", 4, 77)[:-1]
    )  # ends in an unterminated game
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        root, path = folder / "sp", folder / "sp" / "w.jsonl"
        root.mkdir()
        path.touch()
        points = sorted({min(c, len(data)) for c in cuts} | {len(data)})
        with Ledger(folder / "ledger.sqlite") as ledger:
            start = 0
            for i, point in enumerate(points):
                append(path, data[start:point])
                start = point
                if scan_after[i]:
                    run_scan(root, ledger)
            run_scan(root, ledger)
            assert counts(ledger) == {"square8_2p": 6, "hex8_3p": 6, "hexagonal_2p": 6}
            assert ledger.reject_counts() == {"not_json": 1}
            keys = ledger.game_keys()
        with Ledger(folder / "fresh.sqlite") as fresh:
            run_scan(root, fresh)
            assert fresh.game_keys() == keys


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    tail=st.integers(min_value=0, max_value=30),
    chunk=st.integers(min_value=1, max_value=25),
    max_line=st.integers(min_value=1, max_value=30),
)
def test_read_chunks_yields_every_complete_line_once_whatever_the_chunk_size(
    lengths: list[int], tail: int, chunk: int, max_line: int
) -> None:
    lines = [bytes([97 + i % 26]) * n for i, n in enumerate(lengths)]
    data = b"".join(line + b"\n" for line in lines) + b"z" * tail  # an unterminated tail
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.jsonl"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = list(read_chunks(fd, 0, max_line, chunk_bytes=chunk))
        finally:
            os.close(fd)
    offsets = [sum(n + 1 for n in lengths[:i]) for i in range(len(lengths))]
    assert [x for c in chunks for x in c.lines] == [
        (o, line) for o, line in zip(offsets, lines, strict=True) if len(line) <= max_line
    ]
    assert [x for c in chunks for x in c.too_long] == [
        (o, len(line)) for o, line in zip(offsets, lines, strict=True) if len(line) > max_line
    ]
    assert (chunks[-1].end if chunks else 0) == len(data) - tail
