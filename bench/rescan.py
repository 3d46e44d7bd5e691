"""Rescan of an unchanged tree: 10,000 files holding 1,000,000 indexed games,
beside a naive recount of every line (the old loop's way at every start).

    .venv/bin/python bench/rescan.py [--files 10000] [--games 1000000] [--dir /tmp/ringd-bench/rescan] [--runs 5]

The tree and its ledger are built once and reused. Two figures for ringd:
the scan itself (in process), and the whole `ringd scan --json` command
(process start, imports, ledger open, walk, status) as an operator runs it.
Target: <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _common import Timing, machine, measure, table
from _daemon import BenchDaemon
from ringd.ledger import Ledger
from ringd.records import Rules
from ringd.scan import discover, scan
from ringd.sim import write_corpus


def build(folder: Path, files: int, games: int) -> None:
    marker = folder / "built.json"
    want = {"files": files, "games": games, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(
        f"building {files:,} files / {games:,} games in {folder} and indexing them once ...",
        flush=True,
    )
    info = write_corpus(folder / "data" / "selfplay", files, games // files, small=True)
    (folder / "ringd.yaml").write_text(
        "state_dir: var\nwatch: {roots: [data/selfplay]}\ntraining: {enabled: false}\n"
        "configs:\n" + "".join(f"  {name}: {{threshold: 1000}}\n" for name in info.per_config)
    )
    with Ledger(folder / "var" / "ledger.sqlite") as ledger:
        report = scan(ledger, [folder / "data" / "selfplay"], Rules(max_line=1 << 20))
        assert report.new_total == info.games, (report.new_total, info.games)
    marker.write_text(json.dumps(want))


def naive_recount(paths: list[str]) -> int:
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                json.loads(line)
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--games", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/rescan"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    build(args.dir, args.files, args.games)
    root = args.dir / "data" / "selfplay"
    paths = sorted(discover([root]).files)

    totals: list[int] = []

    def in_process() -> None:
        with Ledger(args.dir / "var" / "ledger.sqlite") as ledger:
            report = scan(ledger, [root], Rules(max_line=1 << 20))
            assert report.files_read == 0 and report.new_total == 0
            totals.append(sum(c.total for c in ledger.config_counts()))

    def command() -> None:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ringd.cli",
                "scan",
                "--config",
                str(args.dir / "ringd.yaml"),
                "--json",
            ],
            capture_output=True,
            check=True,
            text=True,
        )
        totals.append(json.loads(out.stdout)["total_games"])

    t_scan = measure(in_process, args.runs)
    t_cmd = measure(command, args.runs)
    # The daemon on the same ledger and tree: start to READY (its first
    # reconciliation included), as systemd waits for it after a restart.
    daemon = BenchDaemon(args.dir / "daemon", [root], state_dir=args.dir / "var")
    ready = []
    for _ in range(args.runs):
        ready.append(daemon.start())
        totals.append(daemon.status()["total_games"])
        daemon.stop()
    t_ready = statistics.median(ready)
    t_naive = measure(lambda: totals.append(naive_recount(paths)), max(1, args.runs // 2))
    assert set(totals) == {args.games}, set(totals)

    rows = [
        [name, f"{t.wall:.3f}", f"{t_naive.wall / t.wall:,.0f}x"]
        for name, t in (
            ("ringd scan, in process", t_scan),
            ("`ringd scan --json`, whole command", t_cmd),
            ("`ringd run`: restart to READY", Timing(t_ready, 0.0, args.runs)),
            ("naive recount (json.loads every line)", t_naive),
        )
    ]
    print(
        f"rescan: {len(paths):,} unchanged files, {args.games:,} indexed games; {machine()}; median of {args.runs}"
    )
    print(table(["what", "s", "faster than naive"], rows))
    print(
        f"target <= 2 s: {'MET' if max(t_cmd.wall, t_ready) <= 2 else 'MISSED'} "
        f"(scan command {t_cmd.wall:.3f} s, daemon restart to READY {t_ready:.3f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
