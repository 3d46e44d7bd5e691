"""Detection latency: a game's newline written -> the game counted in /v1/status,
at 1,000 games/s from 64 writer processes, beside a 30 s polling loop (the old
way) watching the same files in the same run.

    .venv/bin/python bench/latency.py [--writers 64] [--rate 1000] [--duration 60] [--poll-interval 30]

Each writer records the time right after each game's write; ringd's ledger
records when each game was committed (what /v1/status counts). The poller is
a process running `ringd scan` on its own ledger every --poll-interval s; it
keeps polling after the writers stop until it has counted every game.
Target: p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, table
from _daemon import BenchDaemon
from ringd.boards import CONFIGS
from ringd.ledger import Ledger
from ringd.records import Rules
from ringd.scan import scan
from ringd.sim import game_line, make_record

DIRS = [
    "gpu",
    "mcts_1",
    "hybrid_2",
    "daemon_3",
    "cluster_4/h1",
    "cluster_4/h2",
    "selfplay odd name",
]


def writer(index: int, root: str, rate: float, duration: float, out: str) -> None:
    rng = random.Random(index)
    templates = []
    for _ in range(8):
        record = make_record(
            rng, rng.choice(CONFIGS), "camel", "TEMPLATE-ID", moves=rng.randint(20, 60)
        )
        # A game is its moves: the id in the first move makes each line its own game.
        record["moves"][0]["id"] = "TEMPLATE-ID"  # type: ignore[index]
        templates.append(game_line(record))
    path = Path(root) / DIRS[index % len(DIRS)] / f"w{index:02d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps: list[tuple[str, float]] = []
    period = 1.0 / rate
    start = time.time() + rng.random() * period
    with open(path, "ab", buffering=0) as f:
        n = 0
        while (due := start + n * period) < start + duration:
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            game_id = f"w{index:02d}-{n:06d}"
            f.write(templates[n % len(templates)].replace(b"TEMPLATE-ID", game_id.encode()))
            stamps.append((game_id, time.time()))
            n += 1
    Path(out).write_text(json.dumps(stamps))


def poller(root: str, ledger_path: str, interval: float, expected: int, out: str) -> None:
    with Ledger(Path(ledger_path)) as ledger:
        while True:
            time.sleep(interval)
            scan(ledger, [root], Rules(max_line=1 << 26))
            if ledger.game_count() >= expected:
                break
    Path(out).write_text("done")


def commit_times(ledger_path: Path) -> dict[str, float]:
    db = sqlite3.connect(ledger_path)
    try:
        return dict(db.execute("SELECT game_id, added FROM games").fetchall())
    finally:
        db.close()


def percentiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98], max(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0, help="games/s in all")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--poll-interval", type=float, default=30.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="rd-lat-", dir="/tmp"))
    root = folder / "selfplay"
    root.mkdir()
    daemon = BenchDaemon(folder, [root])
    daemon.start()
    expected = int(args.rate * args.duration)
    ctx = multiprocessing.get_context("fork")
    poll = ctx.Process(
        target=poller,
        args=(
            str(root),
            str(folder / "poller.sqlite"),
            args.poll_interval,
            expected,
            str(folder / "poll.done"),
        ),
    )
    poll.start()
    procs = [
        ctx.Process(
            target=writer,
            args=(
                i,
                str(root),
                args.rate / args.writers,
                args.duration,
                str(folder / f"w{i}.json"),
            ),
        )
        for i in range(args.writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    written = {
        gid: t
        for i in range(args.writers)
        for gid, t in json.loads((folder / f"w{i}.json").read_text())
    }
    deadline = time.monotonic() + 30
    while daemon.status()["total_games"] < len(written) and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.stop()
    poll.join(args.poll_interval * 3 + 60)

    rows = []
    results = {}
    for name, ledger in (
        ("ringd daemon (inotify + debounce)", folder / "var" / "ledger.sqlite"),
        (f"polling loop every {args.poll_interval:g} s", folder / "poller.sqlite"),
    ):
        committed = commit_times(ledger)
        lat = [committed[g] - t for g, t in written.items() if g in committed]
        missing = len(written) - len(lat)
        p50, p99, worst = percentiles(lat)
        results[name] = p99
        rows.append(
            [
                name,
                f"{len(lat):,}",
                str(missing),
                f"{p50 * 1000:,.1f}",
                f"{p99 * 1000:,.1f}",
                f"{worst * 1000:,.1f}",
            ]
        )
    print(
        f"latency: {args.writers} writers, {args.rate:g} games/s for {args.duration:g} s "
        f"({len(written):,} games, {os.path.getsize(next(root.rglob('*.jsonl'))) // max(1, len(written) // args.writers):,} B each); {machine()}"
    )
    print(table(["what", "games", "missed", "p50 ms", "p99 ms", "max ms"], rows))
    p99 = next(iter(results.values()))
    print(f"target p99 <= 100 ms: {'MET' if p99 <= 0.1 else 'MISSED'} ({p99 * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
