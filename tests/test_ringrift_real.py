"""What RingRift's own scripts write, and what its maintenance scripts do to it afterwards.

The corpus lives in the project's shared folder (`../shared/fixtures/ringrift-real/`,
see its README): 179 records, 157 distinct games, written by RingRift's selfplay
scripts. Tests copy files into tmp_path before changing them, the way a RingRift
host's maintenance scripts would (json.loads, edit, json.dumps back, reopening
the same path with "w"), and check that no game is counted twice and that every
game still on disk reads back by its ledger span (what the trainer does).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, ringd, write_config
from ringd.ledger import Ledger
from ringd.records import Game, Rules, parse_line
from ringd.scan import ScanReport, scan
from ringd.train.games import read_games
from ringd.train.spec import GameSpan

REAL = REPO.parent / "shared" / "fixtures" / "ringrift-real"

# Worked out from the corpus (its README gives the distinct games by content:
# square8_2p 63, hex8_2p 71, square8_3p 10, hexagonal_2p 6, square19_3p 3,
# square19_4p 4). Ten GPU records say "status": "completed" but
# "termination_reason": "status:completed:in_progress" (cut off at max_moves;
# RingRift's cleanup deletes them as unfinished): ringd rejects them too.
UNFINISHED = {
    "gpu_square8_2p/games_square8_2p_11855.jsonl": 1,
    "gpu_square8_2p_raw/games_square8_2p_12261.jsonl": 1,
    "gpu_square8_3p/games_square8_3p_14445.jsonl": 1,
    "gpu_hex8_2p/games_hex8_2p_12122.jsonl": 1,
    "gpu_hex8_2p_raw/games_hex8_2p_12623.jsonl": 2,
    "gpu_hex8_2p_raw/games_hex8_2p_18967.jsonl": 1,
    "gpu_hexagonal_2p/games_hexagonal_2p_15582.jsonl": 2,
    "gpu_square19_4p/games_square19_4p_15697.jsonl": 1,
}
COUNTED = {
    "square8_2p": 61,  # 63 distinct, 2 unfinished; hybrid: 12 records, 1 game
    "square8_3p": 9,
    "hex8_2p": 67,  # 71 distinct, 4 unfinished; hybrid: 12 records, 1 game
    "hexagonal_2p": 4,
    "square19_3p": 3,
    "square19_4p": 3,
}
DISTINCT = {  # the README's distinct games, when no status counts as unfinished
    "square8_2p": 63,
    "square8_3p": 10,
    "hex8_2p": 71,
    "hexagonal_2p": 6,
    "square19_3p": 3,
    "square19_4p": 4,
}


@pytest.fixture
def real() -> Path:
    if not (REAL / "selfplay").is_dir():
        pytest.skip(
            f"RingRift corpus not present at {REAL} (it lives in the project's shared/ folder)"
        )
    return REAL / "selfplay"


@pytest.fixture
def copied(real: Path, tmp_path: Path) -> Path:
    """The corpus copied into a watched root of tmp_path (writable, as on a host)."""
    root = tmp_path / "data" / "selfplay"
    shutil.copytree(real, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def counts(ledger: Ledger) -> dict[str, int]:
    return {c.name: c.total for c in ledger.config_counts() if c.total}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def rewrite(path: Path, recs: list[dict[str, Any]]) -> None:
    """What RingRift's maintenance scripts do: reopen the same path with "w"."""
    with open(path, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")


def keys_on_disk(root: Path, rules: Rules | None = None) -> set[bytes]:
    """The keys of every game (by the rules) in the files below root now."""
    out = set()
    for path in root.rglob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            parsed = parse_line(line, rules or Rules())
            if isinstance(parsed, Game):
                out.add(parsed.key)
    return out


def read_back(ledger: Ledger) -> tuple[set[bytes], dict[bytes, str]]:
    """Every counted game read back from its span by the trainer's own reader:
    (keys read, {key: why missing})."""
    ok: set[bytes] = set()
    missing: dict[bytes, str] = {}
    for config in ledger.config_counts():
        spans = [
            GameSpan(path=s.path, offset=s.offset, length=s.length, key=s.key.hex(), seq=s.seq)
            for s in ledger.window(config.name, ledger.max_seq(config.name), config.total)
        ]
        got = read_games(spans, range(len(spans)))
        ok |= {spans[i].key_bytes for i in got.lines}
        missing |= {spans[m.index].key_bytes: m.reason for m in got.missing}
    return ok, missing


def run(ledger: Ledger, root: Path, rules: Rules | None = None) -> ScanReport:
    report = scan(ledger, [root], rules or Rules())
    assert not report.errors, report.errors
    return report


# ----------------------------------------------------------------------------- the corpus


def test_the_corpus_counts_exactly_per_configuration(real: Path, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = run(ledger, real)
        assert counts(ledger) == COUNTED
        assert report.new_total == sum(COUNTED.values()) == 147
        assert report.games_read == 179 - 10  # hybrid copies read, counted once
        assert ledger.reject_counts() == {"unfinished": 10}
        assert report.files == 18  # *.jsonl only (stats.json are not games); one empty
        ok, missing = read_back(ledger)
        assert not missing and len(ok) == 147


def test_with_every_status_finished_the_readmes_157_distinct_games(
    real: Path, tmp_path: Path
) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, real, Rules(unfinished=frozenset()))
        assert counts(ledger) == DISTINCT
        assert sum(DISTINCT.values()) == 157 and ledger.rejected_total() == 0


def test_unfinished_rejects_are_counted_per_file(real: Path, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, real)
        per_file = {
            path: len(
                [line for line in (real / path).read_bytes().splitlines() if b"in_progress" in line]
            )
            for path in UNFINISHED
        }
        assert per_file == UNFINISHED


def test_a_writer_that_says_hex_files_its_games_under_hexagonal(
    copied: Path, tmp_path: Path
) -> None:
    # generate_gumbel_selfplay.py --board hex writes "board_type": "hex".
    source = copied / "gpu_hexagonal_2p" / "games_hexagonal_2p_15582.jsonl"
    aliased = [dict(r, board_type="hex") for r in records(source)]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        rewrite(copied / "gumbel" / "gumbel_hex.jsonl", aliased)
        report = run(ledger, copied)
        assert report.new_total == 0 and report.games_read == 4
        assert counts(ledger) == COUNTED
        assert "hex_2p" not in {c.name for c in ledger.config_counts()}


def test_ringd_scan_shows_the_counts_and_the_unfinished_rejects(
    copied: Path, tmp_path: Path
) -> None:
    # A writer given `--board hex`: its games are hexagonal's, shown under that name only.
    source = copied / "gpu_hexagonal_2p" / "games_hexagonal_2p_15582.jsonl"
    rewrite(copied / "gumbel" / "hex.jsonl", [dict(r, board_type="hex") for r in records(source)])
    config = write_config(tmp_path)
    result = ringd("scan", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    shown = {c["name"]: c["total_games"] for c in status["configs"] if c["total_games"]}
    assert shown == COUNTED
    assert status["rejected_total"] == 12 and status["rejects"] == {"unfinished": 12}
    table = ringd("scan", "--config", str(config))
    assert "147 games, 147 new, 12 rejected (unfinished 12)" in table.stdout, table.stdout


# ----------------------------------------------------------------------------- maintenance


def _unfinished(rec: dict[str, Any]) -> bool:
    return "in_progress" in str(rec.get("termination_reason")) or rec.get("status") in (
        "in_progress",
        "error",
    )


def cleanup_victory_types(path: Path) -> None:
    """scripts/cleanup_victory_types.py --clean-jsonl --apply, on one file."""
    kept = []
    for rec in records(path):
        if _unfinished(rec):
            continue
        reason = rec.get("termination_reason")
        if isinstance(reason, str) and reason.startswith("status:completed:"):
            rec["termination_reason"] = reason.rsplit(":", 1)[1]
        kept.append(rec)
    rewrite(path, kept)


def test_cleanup_rewrites_in_place_count_no_game_twice_and_lose_none(
    copied: Path, tmp_path: Path
) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        before = ledger.game_keys()
        for path in sorted(copied.rglob("*.jsonl")):
            if path.stat().st_size:
                cleanup_victory_types(path)
        report = run(ledger, copied)
        assert report.new_total == 0 and report.files_read == 17
        assert counts(ledger) == COUNTED and ledger.game_keys() == before
        # The rewritten files hold no unfinished line any more: their rejects went too.
        assert ledger.rejected_total() == 0
        ok, missing = read_back(ledger)
        assert not missing and ok == before == keys_on_disk(copied)


def test_a_rewrite_seen_half_written_counts_nothing_twice(copied: Path, tmp_path: Path) -> None:
    path = copied / "soak" / "soak.square8_2p.run2.jsonl"
    recs = records(path)
    for rec in recs:
        rec["termination_reason"] = rec["termination_reason"].rsplit(":", 1)[1]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        before = ledger.game_keys()
        with open(path, "w") as f:  # a scan sees it empty, then half written, then whole
            f.flush()
            assert run(ledger, copied).new_total == 0
            f.write("".join(json.dumps(r) + "\n" for r in recs[:7]) + json.dumps(recs[7])[:100])
            f.flush()
            assert run(ledger, copied).new_total == 0
            f.write(
                json.dumps(recs[7])[100:] + "\n" + "".join(json.dumps(r) + "\n" for r in recs[8:])
            )
        assert run(ledger, copied).new_total == 0
        assert counts(ledger) == COUNTED and ledger.game_keys() == before
        ok, missing = read_back(ledger)
        assert not missing and ok == keys_on_disk(copied)


def test_deleted_lines_stay_counted_and_only_they_are_missing(copied: Path, tmp_path: Path) -> None:
    # filter_timeout_games.py: games that ran to the move limit go, the rest is rewritten.
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        deleted: set[bytes] = set()
        for path in sorted(copied.glob("gpu_*/*.jsonl")):
            kept = []
            for rec in records(path):
                if len(rec["moves"]) >= 500:
                    parsed = parse_line(json.dumps(rec).encode())
                    if isinstance(parsed, Game):
                        deleted.add(parsed.key)
                else:
                    kept.append(rec)
            rewrite(path, kept)
        assert deleted
        assert run(ledger, copied).new_total == 0
        assert counts(ledger) == COUNTED
        ok, missing = read_back(ledger)
        assert set(missing) == deleted - keys_on_disk(copied)
        assert ok == keys_on_disk(copied)


def test_an_in_place_schema_upgrade_that_grows_every_line(copied: Path, tmp_path: Path) -> None:
    # upgrade_jsonl_schema.py --in-place: new fields first, the file grows past its old size.
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        before = ledger.game_keys()
        for path in sorted(copied.rglob("*.jsonl")):
            if path.stat().st_size:
                old_size = path.stat().st_size
                rewrite(path, [{"schema_version": 2, **rec} for rec in records(path)])
                assert path.stat().st_size > old_size
        assert run(ledger, copied).new_total == 0
        assert counts(ledger) == COUNTED and ledger.game_keys() == before
        ok, missing = read_back(ledger)
        assert not missing and ok == before


def test_a_moved_file_moves_its_spans(copied: Path, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        (copied / "archive").mkdir()
        os.rename(copied / "canonical", copied / "archive" / "canonical")
        report = run(ledger, copied)
        assert report.new_total == 0 and report.gone == 3  # (the empty file was never tracked)
        assert counts(ledger) == COUNTED
        ok, missing = read_back(ledger)
        assert not missing and len(ok) == 147


def test_a_second_run_into_the_same_file_with_w(copied: Path, tmp_path: Path) -> None:
    # run_self_play_soak.py run twice into one path: the second run opens it with "w".
    path = copied / "soak" / "soak.square8_2p.random.jsonl"
    run2 = copied / "soak" / "soak.square8_2p.run2.jsonl"
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        first = ledger.game_keys()
        run2_bytes = run2.read_bytes()
        run2.unlink()
        path.write_bytes(run2_bytes)
        report = run(ledger, copied)
        assert report.new_total == 0  # run2's games were counted from run2's own file
        assert ledger.game_keys() == first
        ok, missing = read_back(ledger)
        # Run 1's games were overwritten: those are missing, every other game reads back.
        assert ok == keys_on_disk(copied)
        assert set(missing) == first - keys_on_disk(copied)
        assert len(missing) == 10


def test_copies_across_the_corpus_count_once(copied: Path, tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, copied)
        shutil.copytree(copied / "gpu_hex8_2p", copied / "cluster_3" / "node7" / "gpu_hex8_2p")
        shutil.copy(copied / "soak" / "soak.hex8_2p.random.jsonl", copied / "merged.jsonl")
        report = run(ledger, copied)
        assert report.new_total == 0 and report.games_read == 9 + 10
        assert counts(ledger) == COUNTED
        assert Counter(ledger.reject_counts()) == Counter({"unfinished": 11})
