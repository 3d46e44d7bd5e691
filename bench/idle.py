"""An idle daemon: CPU and memory over 60 s while it watches 10,000 files.

    .venv/bin/python bench/idle.py [--files 10000] [--seconds 60]

The tree (10,000 files of small games in RingRift-like folders, 100 each) is
indexed at start; then nothing is written. CPU is the daemon's user + system
time over the window (/proc/PID/stat); RSS is sampled every second
(/proc/PID/status). The default rescan_interval_s (60 s) falls inside the
window, so one reconciliation scan of all 10,000 files is included.
Targets: <= 1% of a core, <= 120 MB RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine, table
from _daemon import BenchDaemon
from ringd.sim import write_corpus

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rd-idle-", dir="/tmp"))
    try:
        info = write_corpus(folder / "selfplay", args.files, 100, small=True)
        dirs = {p.parent for p in info.files}
        daemon = BenchDaemon(folder, [folder / "selfplay"])
        ready_s = daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        time.sleep(2)  # let start-up work (the first scan's follow-up) settle
        c0, t0 = cpu_seconds(pid), time.monotonic()
        samples = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1)
            samples.append(rss_mb(pid))
        cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        games = daemon.status()["total_games"]
        daemon.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"idle: {args.files:,} files in {len(dirs):,} directories, {games:,} games, "
        f"ready after {ready_s:.1f} s; {args.seconds:g} s window; {machine()}"
    )
    rows = [
        ["CPU, % of one core", f"{cpu * 100:.2f}", "1.00"],
        ["RSS max, MB", f"{max(samples):.1f}", "120"],
        ["RSS at end, MB", f"{samples[-1]:.1f}", "120"],
    ]
    print(table(["what", "measured", "target"], rows))
    met = cpu <= 0.01 and max(samples) <= 120
    print(f"targets <= 1% of a core and <= 120 MB: {'MET' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
