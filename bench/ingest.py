"""Ingest throughput: ringd indexing a >= 1 GB simulator corpus, beside `wc -l`
(the read limit) and a naive recount of every line (the old loop's way).

    .venv/bin/python bench/ingest.py [--gb 1.0] [--dir /tmp/ringd-bench/ingest] [--runs 3]

The corpus is generated once and reused (same seed, same bytes). Every run
starts from an empty ledger. All three read the same files from the page
cache (warmed by a first `wc -l`), so the comparison is of CPU work.
Target: >= 300 MB/s per core (bytes / CPU seconds of the indexing process).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, measure, table
from ringd.ledger import Ledger
from ringd.records import Rules
from ringd.scan import discover, scan
from ringd.sim import write_corpus

GAMES_PER_FILE = 400


def corpus(folder: Path, gb: float) -> tuple[list[str], int, int]:
    marker = folder / "corpus.json"
    want = {"gb": gb, "games_per_file": GAMES_PER_FILE, "version": 2}  # 2: ids in the moves
    if marker.exists() and json.loads(marker.read_text()).get("want") == want:
        meta = json.loads(marker.read_text())
    else:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating a {gb} GB corpus in {folder} ...", flush=True)
        files, total_bytes, total_games = 0, 0, 0
        # Write in batches until the size is reached (game sizes vary by board).
        while total_bytes < gb * 1e9:
            info = write_corpus(folder / f"batch{files}", 50, GAMES_PER_FILE, seed=files)
            files += len(info.files)
            total_bytes += info.bytes
            total_games += info.games
        meta = {"want": want, "bytes": total_bytes, "games": total_games}
        marker.write_text(json.dumps(meta))
    paths = sorted(discover([folder]).files)
    return paths, meta["bytes"], meta["games"]


def naive_recount(paths: list[str]) -> dict[str, int]:
    """The old loop: every line of every file through json.loads, every time."""
    counts: dict[str, int] = {}
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                record = json.loads(line)
                board = record.get("boardType") or record.get("board_type")
                players = record.get("numPlayers") or record.get("num_players")
                key = f"{board}_{players}p"
                counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/ingest"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    paths, total_bytes, total_games = corpus(args.dir / "corpus", args.gb)
    subprocess.run(["wc", "-l", *paths], capture_output=True, check=True)  # warm the page cache
    mb = total_bytes / 1e6

    def wc() -> None:
        subprocess.run(["wc", "-l", *paths], capture_output=True, check=True)

    state = Path(tempfile.mkdtemp(prefix="ringd-bench-ledger-"))
    result: dict[str, int] = {}

    def fresh_ledger() -> None:
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()

    def ringd() -> None:
        with Ledger(state / "ledger.sqlite") as ledger:
            report = scan(ledger, [args.dir / "corpus"], Rules())
            result["games"] = report.new_total

    t_wc = measure(wc, args.runs)
    t_ringd = measure(ringd, args.runs, setup=fresh_ledger)
    assert result["games"] == total_games, (result["games"], total_games)
    t_naive = measure(lambda: naive_recount(paths), args.runs)
    shutil.rmtree(state, ignore_errors=True)

    rows = []
    for name, t, cpu in (
        ("wc -l (read limit)", t_wc, None),
        ("ringd scan, empty ledger", t_ringd, t_ringd.cpu),
        ("naive recount (json.loads)", t_naive, t_naive.cpu),
    ):
        rows.append(
            [
                name,
                f"{t.wall:.2f}",
                f"{mb / t.wall:,.0f}",
                f"{mb / cpu:,.0f}" if cpu else "-",
                f"{total_games / t.wall:,.0f}",
                f"{t.wall / t_ringd.wall:.2f}x",
            ]
        )
    print(
        f"ingest: {len(paths):,} files, {mb:,.0f} MB, {total_games:,} games; {machine()}; median of {args.runs}"
    )
    print(table(["what", "s", "MB/s", "MB/s per core", "games/s", "ringd speedup"], rows))
    per_core = mb / t_ringd.cpu
    print(
        f"target >= 300 MB/s per core: {'MET' if per_core >= 300 else 'MISSED'} ({per_core:,.0f} MB/s per core)"
    )


if __name__ == "__main__":
    sys.exit(main())
