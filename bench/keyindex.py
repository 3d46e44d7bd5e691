"""Why ingest slows as the ledger grows (issue 15): the key index alone, measured.

    .venv/bin/python bench/keyindex.py --big bench/out/scale/runs/fill/var/ledger.sqlite
        [--games 3000000] [--cases 29000:256,250000:1024,1000000:1024]

Inserts --games games with random 16-byte keys (content keys are hashes: evenly spread)
through the real `Ledger.commit`, with no file parsing, into a fresh empty ledger and
into a copy of --big (a large ledger, e.g. the 20 M-game one that `bench/scale.py`
fills). Each case is GAMES_PER_COMMIT:CACHE_MIB. The ledger's writer commits a scan
about 29,000 small games at a time (one 8 MiB chunk of a file) with a 256 MiB page
cache: the first case. Every commit of a scan is one such transaction; here the
games of one transaction all belong to one file. Prints wall and CPU seconds and the
ratio of the rates (large over empty) per case.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import machine, table
from ringd.boards import CONFIGS
from ringd.ledger import Cursor, GameRow, Ledger


@dataclass(frozen=True)
class Case:
    per_commit: int
    cache_mib: int

    @staticmethod
    def parse(text: str) -> Case:
        per_commit, cache = text.split(":")
        return Case(int(per_commit), int(cache))


def insert(path: Path, games: int, case: Case, seed: int) -> tuple[float, float]:
    """Wall and CPU seconds to commit `games` random-key games into the ledger at `path`."""
    rng = random.Random(seed)
    configs = sorted(CONFIGS)[:12]
    with Ledger(path, writer=True) as db:
        db._db.execute(f"PRAGMA cache_size = {-1024 * case.cache_mib}")
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        made = 0.0
        done = 0
        while done < games:
            n = min(case.per_commit, games - done)
            m0 = time.process_time()
            rows = [
                GameRow(rng.choice(configs), rng.randbytes(16), i * 290, 280, None)
                for i in range(n)
            ]
            name = f"/keyindex/{seed}/{done}.jsonl"
            made += time.process_time() - m0
            file_id = db.track_file(name, 1, done + 1)
            db.commit(file_id, Cursor(1, done + 1, n * 290, b"", n * 290, 0), rows)
            done += n
        db._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime - made
    return wall - made, cpu


def games_in(path: Path) -> int:
    with Ledger(path) as db:
        return sum(c.total for c in db.config_counts())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", type=Path, required=True, help="a large ledger (copied)")
    parser.add_argument("--games", type=int, default=3_000_000)
    parser.add_argument("--cases", default="29000:256,250000:1024,1000000:1024")
    parser.add_argument("--dir", type=Path, default=None, help="scratch (default: /tmp)")
    args = parser.parse_args()
    cases = [Case.parse(c) for c in args.cases.split(",")]
    big_games = games_in(args.big)
    scratch = Path(tempfile.mkdtemp(prefix="rd-keyindex-", dir=args.dir))
    rows = []
    try:
        for i, case in enumerate(cases):
            empty = scratch / "empty.sqlite"
            wall_e, cpu_e = insert(empty, args.games, case, seed=i)
            for p in scratch.iterdir():
                p.unlink()
            copy = scratch / "big.sqlite"
            shutil.copyfile(args.big, copy)
            os.sync()
            wall_b, cpu_b = insert(copy, args.games, case, seed=i)
            for p in scratch.iterdir():
                p.unlink()
            rows.append(
                [
                    f"{case.per_commit:,}",
                    f"{case.cache_mib:,}",
                    f"{wall_e:.1f} ({cpu_e:.1f})",
                    f"{wall_b:.1f} ({cpu_b:.1f})",
                    f"{wall_e / wall_b:.2f}x",
                ]
            )
            print(f"{case}: {' | '.join(rows[-1][2:])}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n{args.games:,} random-key games through Ledger.commit, into an empty ledger and "
        f"into a copy of one of {big_games:,} games; {machine()}\n"
        + table(
            [
                "games a commit",
                "page cache MiB",
                "empty: wall s (CPU s)",
                f"{big_games:,} games: wall s (CPU s)",
                "rate at size / empty",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
