"""RAM-disk flusher: lag from a game's newline to its fsynced copy (p50/p99) under
64 writers, beside `rsync` every N seconds (the old way) in the same run; then
flush throughput beside plain `cp` + `fsync` of the same bytes.

    .venv/bin/python bench/ramdisk.py [--writers 64] [--rate 1000] [--duration 30] [--rsync-every 5] [--burst-mb 1024]

Sources live on a real tmpfs (/dev/shm), targets on the disk under the
daemon's watched root (so ingest runs too, as in production). Each writer
records when each game's write returned and where it ended; the daemon's
event stream reports each fsynced copy (`ramdisk_flushed`: source, bytes now
in the target, when). The rsync loop copies the same tree to its own target,
then fsyncs it (`sync -f`); a game's rsync lag runs to the end of the first
pass that started after the write. Needs rsync (apt-get install rsync).
Targets: p99 lag <= 1 s; throughput within 2x of cp + fsync.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import machine, table
from _daemon import BenchDaemon
from ringd.boards import CONFIGS
from ringd.cli import client
from ringd.sim import game_line, make_record

DIRS = ["gpu", "mcts_1", "hybrid_2", "daemon_3", "cluster_4/h1"]


def templates(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        game_line(
            make_record(rng, rng.choice(CONFIGS), "camel", "TEMPLATE-ID", moves=rng.randint(20, 60))
        )
        for _ in range(8)
    ]


def writer(index: int, root: str, rate: float, duration: float, out: str) -> None:
    lines = templates(index)
    path = Path(root) / DIRS[index % len(DIRS)] / f"w{index:02d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps: list[tuple[int, float]] = []
    period = 1.0 / rate
    start = time.time() + random.Random(index).random() * period
    with open(path, "ab", buffering=0) as f:
        n = end = 0
        while (due := start + n * period) < start + duration:
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            line = lines[n % len(lines)].replace(b"TEMPLATE-ID", f"w{index:02d}-{n:06d}".encode())
            f.write(line)
            end += len(line)
            stamps.append((end, time.time()))
            n += 1
    Path(out).write_text(json.dumps({"path": str(path), "stamps": stamps}))


def rsync_loop(src: str, dst: str, every: float, stop: str, out: str) -> None:
    passes = []
    while not os.path.exists(stop):
        t0 = time.time()
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        subprocess.run(["sync", "-f", dst], check=True)
        passes.append((t0, time.time()))
        time.sleep(max(0.0, every - (time.time() - t0)))
    Path(out).write_text(json.dumps(passes))


def quantiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98], max(values)


def lag_phase(args: argparse.Namespace, folder: Path, shm: Path) -> list[list[str]]:
    src, target = shm / "lag", folder / "selfplay" / "ramdisk"
    src.mkdir()
    daemon = BenchDaemon(
        folder, [folder / "selfplay"], extra=f"ramdisk:\n  - {{source: {src}, target: {target}}}\n"
    )
    (folder / "selfplay").mkdir()
    daemon.start()
    flushed: dict[str, list[tuple[int, float]]] = {}

    def follow() -> None:
        for event in client.follow(daemon.socket):
            if event.get("event") == "ramdisk_flushed":
                flushed.setdefault(event["source"], []).append((event["end"], event["fsynced_at"]))

    threading.Thread(target=follow, daemon=True).start()
    ctx = multiprocessing.get_context("fork")
    stop = folder / "rsync.stop"
    rsync = ctx.Process(
        target=rsync_loop,
        args=(
            str(src),
            str(folder / "rsync-target"),
            args.rsync_every,
            str(stop),
            str(folder / "rsync.json"),
        ),
    )
    rsync.start()
    procs = [
        ctx.Process(
            target=writer,
            args=(i, str(src), args.rate / args.writers, args.duration, str(folder / f"w{i}.json")),
        )
        for i in range(args.writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    time.sleep(args.rsync_every + 2)  # the last games reach both copies
    stop.touch()
    rsync.join()
    daemon.stop()
    passes = json.loads((folder / "rsync.json").read_text())
    starts = [s for s, _ in passes]
    ringd_lag, rsync_lag, missing = [], [], 0
    for i in range(args.writers):
        w = json.loads((folder / f"w{i}.json").read_text())
        events = sorted(flushed.get(w["path"], []))
        ends = [e for e, _ in events]
        for end, t in w["stamps"]:
            k = bisect.bisect_left(ends, end)
            if k == len(ends):
                missing += 1
            else:
                ringd_lag.append(min(at for _, at in events[k:]) - t)
            j = bisect.bisect_right(starts, t)
            if j < len(passes):
                rsync_lag.append(passes[j][1] - t)
    rows = []
    for name, lag in (
        ("ringd flusher (events, fsync)", ringd_lag),
        (f"rsync every {args.rsync_every:g} s + sync", rsync_lag),
    ):
        p50, p99, worst = quantiles(lag)
        rows.append(
            [
                name,
                f"{len(lag):,}",
                f"{p50 * 1000:,.0f}",
                f"{p99 * 1000:,.0f}",
                f"{worst * 1000:,.0f}",
            ]
        )
    print(
        f"lag: {args.writers} writers, {args.rate:g} games/s for {args.duration:g} s; {missing} games never reported flushed"
    )
    print(table(["newline -> durable copy", "games", "p50 ms", "p99 ms", "max ms"], rows))
    p99 = quantiles(ringd_lag)[1]
    return [
        ["p99 lag <= 1 s", f"{p99 * 1000:,.0f} ms", "MET" if p99 <= 1 and not missing else "MISSED"]
    ]


def throughput_phase(args: argparse.Namespace, folder: Path, shm: Path) -> list[list[str]]:
    src, target = shm / "burst", folder / "burst-target"
    src.mkdir()
    daemon = BenchDaemon(
        folder / "burst-daemon",
        [folder / "empty"],
        extra=f"ramdisk:\n  - {{source: {src}, target: {target}}}\n",
    )
    (folder / "empty").mkdir()
    daemon.start()
    # Pre-build the bytes so the timer measures copying, not JSON generation.
    per_file = args.burst_mb * 1_000_000 // args.writers
    block = b"".join(templates(0)) * 64
    data = (block * (per_file // len(block) + 1))[:per_file]
    data = data[: data.rfind(b"\n") + 1]
    total = len(data) * args.writers
    t0 = time.monotonic()
    for i in range(args.writers):
        path = src / DIRS[i % len(DIRS)] / f"b{i:02d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    while daemon.status()["ramdisk"][0]["flushed_bytes"] < total:
        time.sleep(0.01)
    flusher_s = time.monotonic() - t0
    daemon.stop()
    cp_target = folder / "cp-target"
    t0 = time.monotonic()
    subprocess.run(["cp", "-r", str(src), str(cp_target)], check=True)
    for path in cp_target.rglob("*.jsonl"):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    cp_s = time.monotonic() - t0
    mb = total / 1e6
    print(f"throughput: {args.writers} files, {mb:,.0f} MB written to tmpfs at once")
    print(
        table(
            ["copy to disk", "s", "MB/s"],
            [
                [
                    "ringd flusher (from the first write)",
                    f"{flusher_s:.2f}",
                    f"{mb / flusher_s:,.0f}",
                ],
                ["cp -r + fsync each file", f"{cp_s:.2f}", f"{mb / cp_s:,.0f}"],
            ],
        )
    )
    ratio = flusher_s / cp_s
    return [
        [
            "throughput within 2x of cp + fsync",
            f"{ratio:.2f}x the time",
            "MET" if ratio <= 2 else "MISSED",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rsync-every", type=float, default=5.0)
    parser.add_argument("--burst-mb", type=int, default=1024)
    args = parser.parse_args()
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is needed for the baseline: apt-get install rsync")
    folder = Path(tempfile.mkdtemp(prefix="rd-rd-", dir="/tmp"))
    shm = Path(tempfile.mkdtemp(prefix="ringd-bench-", dir="/dev/shm"))
    try:
        print(f"ramdisk: sources on {shm} (tmpfs), targets in {folder}; {machine()}")
        verdicts = lag_phase(args, folder, shm) + throughput_phase(args, folder, shm)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    print(table(["target", "measured", ""], verdicts))


if __name__ == "__main__":
    main()
