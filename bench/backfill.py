"""Control socket response time while the daemon backfills >= 1 GB, beside the
same requests to the same daemon once idle.

    .venv/bin/python bench/backfill.py [--gb 1.0]

Uses bench/ingest.py's corpus (generated if missing). The daemon starts on an
empty ledger, so its first reconciliation indexes everything; meanwhile a
client times GET /v1/status (alternating with /healthz) every 20 ms.
Target: every answer within 100 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, table
from _daemon import BenchDaemon
from ingest import corpus
from ringd.cli import client


def timed_requests(daemon: BenchDaemon, until_ready: bool, count: int = 0) -> list[float]:
    times = []
    i = 0
    while True:
        url = "/v1/status" if i % 2 == 0 else "/healthz"
        t0 = time.perf_counter()
        try:
            if url == "/healthz":
                client.get(daemon.socket, url)
                ready = False
            else:
                ready = client.get_json(daemon.socket, url)["daemon"]["ready"]
        except client.DaemonUnavailable:
            time.sleep(0.005)
            continue
        times.append(time.perf_counter() - t0)
        i += 1
        if (until_ready and ready) or (not until_ready and i >= count):
            return times
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/ingest"))
    args = parser.parse_args()
    _, total_bytes, total_games = corpus(args.dir / "corpus", args.gb)
    folder = Path(tempfile.mkdtemp(prefix="rd-bf-", dir="/tmp"))
    daemon = BenchDaemon(folder, [args.dir / "corpus"])
    try:
        started = time.monotonic()
        daemon.launch()
        during = timed_requests(daemon, until_ready=True)
        backfill_s = time.monotonic() - started
        games = daemon.status()["total_games"]
        idle = timed_requests(daemon, until_ready=False, count=len(during))
    finally:
        daemon.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert games == total_games, (games, total_games)
    rows = []
    for name, t in (
        (f"during the {total_bytes / 1e9:.2f} GB backfill", during),
        ("idle, afterwards", idle),
    ):
        q = statistics.quantiles(t, n=100, method="inclusive")
        rows.append(
            [
                name,
                f"{len(t):,}",
                f"{q[49] * 1000:.1f}",
                f"{q[98] * 1000:.1f}",
                f"{max(t) * 1000:.1f}",
            ]
        )
    print(
        f"backfill: {total_games:,} games indexed in {backfill_s:.1f} s "
        f"({total_bytes / 1e6 / backfill_s:,.0f} MB/s) while answering; {machine()}"
    )
    print(table(["control socket requests", "n", "p50 ms", "p99 ms", "max ms"], rows))
    worst = max(during)
    print(
        f"target: every answer within 100 ms: {'MET' if worst <= 0.1 else 'MISSED'} (max {worst * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
